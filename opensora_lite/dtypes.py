"""The one map from config dtype names to torch dtypes. A leaf."""

from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def dtype_of(name: str) -> torch.dtype:
    """torch dtype of a config name (fp32 | bf16 | fp16)."""
    return DTYPES[name]
