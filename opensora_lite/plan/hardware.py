"""GPUs the planner knows: dense tensor-core peak (models/flops.py) and memory per device."""

from __future__ import annotations

from dataclasses import dataclass

from opensora_lite.config.schema import PlanConfig
from opensora_lite.errors import ConfigError
from opensora_lite.models.flops import PEAK_TFLOPS

# Device memory as the driver reports it (MiB), in GiB.
MEMORY_GIB = {"H100": 81559 / 1024, "H200": 143771 / 1024, "A100": 81920 / 1024, "B200": 183359 / 1024}


@dataclass(frozen=True)
class GPU:
    name: str
    peak_tflops: float  # at the run's matmul precision (dtypes.matmul_precision: bf16 | tf32 | fp32)
    memory_gib: float


def resolve_gpu(plan: PlanConfig, precision: str) -> GPU:
    """The plan's GPU with its peak at `precision` (bf16 | tf32 | fp32); plan.peak_tflops / plan.memory_gib
    override (and define a custom one)."""
    name = plan.gpu
    known = name in PEAK_TFLOPS and name in MEMORY_GIB
    if not known and (plan.peak_tflops is None or plan.memory_gib is None):
        raise ConfigError(
            "plan.gpu",
            f"unknown GPU {name!r}: choose one of {sorted(MEMORY_GIB)}, or give plan.peak_tflops and plan.memory_gib",
        )
    peak = plan.peak_tflops if plan.peak_tflops is not None else PEAK_TFLOPS[name].get(precision)
    if peak is None or peak <= 0:
        raise ConfigError("plan.peak_tflops", f"no peak for {name} at {precision}: give plan.peak_tflops")
    memory = plan.memory_gib if plan.memory_gib is not None else MEMORY_GIB[name]
    if memory <= 0:
        raise ConfigError("plan.memory_gib", f"must be positive, got {memory}")
    return GPU(name, float(peak), float(memory))
