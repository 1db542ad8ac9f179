"""Attention kernels and the one hook where parallelism enters the model.

Every block calls an `AttentionCore` after RoPE. The core picks a kernel (flash-attn 3 on Hopper,
then flash-attn 2, then torch SDPA) by availability, or the one named in config. Engines that
parallelise the sequence (Ulysses) wrap the core from outside; blocks never know about it.
"""

from __future__ import annotations

import functools
import importlib
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BACKENDS = ("auto", "sdpa", "flash2", "flash3", "math")


@functools.lru_cache(maxsize=None)
def _flash_fn(backend: str) -> Callable | None:
    module = {"flash3": "flash_attn_interface", "flash2": "flash_attn"}[backend]
    try:
        return importlib.import_module(module).flash_attn_func
    except Exception:  # not installed, or built against another torch
        return None


def available_backends() -> list[str]:
    """Backends that can run in this process (sdpa and math always can)."""
    names = ["sdpa", "math"]
    for name in ("flash2", "flash3"):
        if _flash_fn(name) is not None:
            names.append(name)
    return names


def math_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Reference softmax(QK^T/sqrt(d))V in fp32, [B, H, L, D] layout; `mask` [Lk] bool keeps keys. For
    tests and debugging."""
    scale = q.shape[-1] ** -0.5
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return (torch.softmax(scores, dim=-1) @ v.float()).to(q.dtype)


def _flash_usable(q: Tensor) -> bool:
    return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)


def resolve_backend(requested: str, q: Tensor) -> str:
    """The kernel that will run for `requested` on this tensor; raises if an explicit one cannot."""
    if requested not in BACKENDS:
        raise ValueError(f"unknown attention backend {requested!r}; choose from {BACKENDS}")
    if requested == "auto":
        if _flash_usable(q):
            if torch.cuda.get_device_capability(q.device)[0] == 9 and _flash_fn("flash3") is not None:
                return "flash3"
            if _flash_fn("flash2") is not None:
                return "flash2"
        return "sdpa"
    if requested in ("flash2", "flash3"):
        if _flash_fn(requested) is None:
            raise RuntimeError(f"attention backend {requested} requested but its package is not installed")
        if not _flash_usable(q):
            raise RuntimeError(f"attention backend {requested} needs CUDA fp16/bf16 tensors, got {q.device} {q.dtype}")
    return requested


def attention(q: Tensor, k: Tensor, v: Tensor, backend: str = "auto", mask: Tensor | None = None) -> Tensor:
    """Multi-head attention on [B, H, L, D] tensors, returning [B, H, L, D]. `mask` [Lk] (bool, True =
    attend) drops keys, e.g. sequence-parallel padding; flash kernels take no mask, so SDPA runs then."""
    kind = resolve_backend(backend, q)
    if kind == "math":
        return math_attention(q, k, v, mask)
    if kind == "sdpa" or mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask[None, :])
    out = _flash_fn(kind)(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    out = out[0] if isinstance(out, tuple) else out  # flash-attn 3 may also return the LSE
    return out.transpose(1, 2)


class AttentionCore(nn.Module):
    """Parameter-free attention after RoPE; the hook that sequence parallelism wraps."""

    def __init__(self, backend: str = "auto"):
        super().__init__()
        self.backend = backend
        self.sp = None  # a parallel.sequence.SPContext when sequence parallelism is on
        self.txt_len = 0  # set by the model for each forward (sequence parallelism needs the layout)
        self.valid_img = 0

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if self.sp is None:
            return attention(q, k, v, self.backend)
        return self.sp.attention(q, k, v, self.txt_len, self.valid_img, self.backend)


Segments = tuple[tuple[int, bool], ...]  # (tokens of the whole sequence, split over sequence-parallel ranks)


class SegmentAttentionCore(AttentionCore):
    """Attention whose queries and keys are each a concatenation of segments, some split over the
    sequence-parallel ranks (video, audio tokens), some replicated on every rank (text): the audio
    stream's cross-modal attention. Without sequence parallelism the segments are plain concatenations."""

    def forward(self, q: Tensor, k: Tensor, v: Tensor, q_segments: Segments = (), kv_segments: Segments = ()) -> Tensor:
        if self.sp is None:
            return attention(q, k, v, self.backend)
        return self.sp.segment_attention(q, k, v, q_segments, kv_segments, self.backend)
