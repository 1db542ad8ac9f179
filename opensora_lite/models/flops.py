"""Device peaks for MFU. Each model family counts its own FLOPs (ModelSpec.flops)."""

from __future__ import annotations

import torch

# Dense (no sparsity) tensor-core peaks per GPU, TFLOP/s, from the vendors' datasheets, by compute dtype.
PEAK_TFLOPS = {
    "H200": {"bf16": 989.4, "fp32": 494.7},  # fp32 counted as TF32 tensor-core work
    "H100": {"bf16": 989.4, "fp32": 494.7},  # SXM; the PCIe card is lower: set run.peak_tflops
    "A100": {"bf16": 312.0, "fp32": 156.0},
    "B200": {"bf16": 2250.0, "fp32": 1125.0},  # HGX B200 dense figures
}


def peak_tflops(device: torch.device, dtype: str) -> float | None:
    """The datasheet peak of this device for MFU, or None where unknown (CPUs, unlisted GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return peaks.get(dtype)
    return None
