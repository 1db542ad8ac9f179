"""The one map from config dtype names to torch dtypes. A leaf."""

from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def dtype_of(name: str) -> torch.dtype:
    """torch dtype of a config name (fp32 | bf16 | fp16)."""
    return DTYPES[name]


def matmul_precision(dtype: str, tf32: bool) -> str:
    """What a run's matrix products compute in on a GPU, which is also the key of its MFU peak
    (models/flops.py): bf16 (run.dtype=bf16: autocast), tf32 (fp32 with run.tf32: tensor cores, 10-bit
    mantissa inputs, fp32 accumulation) or fp32 (IEEE, no tensor cores)."""
    if dtype == "bf16":
        return "bf16"
    return "tf32" if tf32 else "fp32"


def set_tf32(on: bool) -> None:
    """fp32 matrix products and convolutions on CUDA run on TF32 tensor cores (on) or in IEEE fp32 (off).
    Only CUDA kernels read these switches: CPU runs compute what they did."""
    if hasattr(torch.backends, "fp32_precision"):  # torch >= 2.9: mixing in the older switches is an error
        torch.backends.cuda.matmul.fp32_precision = "tf32" if on else "ieee"
        torch.backends.cudnn.conv.fp32_precision = "tf32" if on else "ieee"
    else:
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on
