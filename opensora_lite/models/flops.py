"""Device peaks for MFU. Each model family counts its own FLOPs (ModelSpec.flops)."""

from __future__ import annotations

import torch

# Dense (no sparsity) peaks per GPU, TFLOP/s, from the vendors' datasheets, by what the matrix products
# compute in (dtypes.matmul_precision): bf16 and tf32 on tensor cores, fp32 without them (run.tf32=false).
# An fp32 run's MFU is taken against the peak of the precision it actually runs: TF32 by default.
PEAK_TFLOPS = {
    "H200": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100": {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9},  # SXM; the PCIe card is lower: set run.peak_tflops
    "A100": {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "B200": {"bf16": 2250.0, "tf32": 1100.0, "fp32": 75.0},  # HGX B200 dense figures
}


def peak_for(name: str, precision: str) -> float | None:
    """The datasheet peak of the GPU called `name` (as the driver names it) at `precision` (bf16 | tf32 |
    fp32), or None where unknown."""
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return peaks.get(precision)
    return None


def peak_tflops(device: torch.device, precision: str) -> float | None:
    """The datasheet peak of this device for MFU at `precision` (bf16 | tf32 | fp32), or None where unknown
    (CPUs, unlisted GPUs)."""
    if device.type != "cuda":
        return None
    return peak_for(torch.cuda.get_device_name(device), precision)
