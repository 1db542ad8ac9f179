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


def _flash_usable(device: torch.device, dtype: torch.dtype) -> bool:
    return device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)


def resolve_kernel(requested: str, device: torch.device, dtype: torch.dtype) -> str:
    """The kernel that runs for `requested` on tensors of this device and dtype; raises if an explicit one
    cannot."""
    if requested not in BACKENDS:
        raise ValueError(f"unknown attention backend {requested!r}; choose from {BACKENDS}")
    if requested == "auto":
        if _flash_usable(device, dtype):
            if torch.cuda.get_device_capability(device)[0] == 9 and _flash_fn("flash3") is not None:
                return "flash3"
            if _flash_fn("flash2") is not None:
                return "flash2"
        return "sdpa"
    if requested in ("flash2", "flash3"):
        if _flash_fn(requested) is None:
            raise RuntimeError(f"attention backend {requested} requested but its package is not installed")
        if not _flash_usable(device, dtype):
            raise RuntimeError(f"attention backend {requested} needs CUDA fp16/bf16 tensors, got {device} {dtype}")
    return requested


def resolve_backend(requested: str, q: Tensor) -> str:
    """The kernel that will run for `requested` on this tensor; raises if an explicit one cannot."""
    return resolve_kernel(requested, q.device, q.dtype)


def run_kernel(kind: str, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Attention on [B, H, L, D] tensors with an already resolved kernel (no availability checks: this
    runs inside compiled blocks). `mask` [Lk] (bool, True = attend) drops keys, e.g. sequence-parallel
    padding; flash kernels take no mask, so SDPA runs then."""
    if kind == "math":
        return math_attention(q, k, v, mask)
    if kind == "sdpa" or mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask[None, :])
    out = _flash_fn(kind)(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    out = out[0] if isinstance(out, tuple) else out  # flash-attn 3 may also return the LSE
    return out.transpose(1, 2)


def attention(q: Tensor, k: Tensor, v: Tensor, backend: str = "auto", mask: Tensor | None = None) -> Tensor:
    """Multi-head attention on [B, H, L, D] tensors, returning [B, H, L, D], with the kernel `backend`
    resolves to for q (see run_kernel for `mask`)."""
    return run_kernel(resolve_backend(backend, q), q, k, v, mask)


# the dtypes a block's q can have on a device (autocast, parameter casts): choose_kernels fills them all
_DTYPES_BY_DEVICE = {"cuda": (torch.float32, torch.bfloat16, torch.float16), "cpu": (torch.float32, torch.bfloat16)}


def choose_kernels(model: nn.Module, device: torch.device | str) -> int:
    """Resolve, once and outside compiled code, the kernel every AttentionCore of `model` runs on `device`
    for each dtype its queries can have there (engines call it before compiling blocks; the resolution
    looks up packages and the device's capability, which compiled code should not trace). Returns how
    many cores were set."""
    device = torch.device(device)
    cores = [m for m in model.modules() if isinstance(m, AttentionCore)]
    for core in cores:
        core.kernels = {
            (device.type, dtype): resolve_kernel(core.backend, device, dtype)
            for dtype in _DTYPES_BY_DEVICE.get(device.type, (torch.float32,))
            if core.backend in ("auto", "sdpa", "math") or _flash_usable(device, dtype)
        }
    return len(cores)


class AttentionCore(nn.Module):
    """Parameter-free attention after RoPE; the hook that sequence parallelism wraps. Its kernel per
    (device type, dtype) is chosen once: by choose_kernels before compile, else on first use."""

    def __init__(self, backend: str = "auto"):
        super().__init__()
        self.backend = backend
        self.kernels: dict[tuple[str, torch.dtype], str] = {}
        self.sp = None  # a parallel.sequence.SPContext when sequence parallelism is on
        self.txt_len = 0  # set by the model for each forward (sequence parallelism needs the layout)
        self.valid_img = 0

    def kernel_for(self, q: Tensor) -> str:
        key = (q.device.type, q.dtype)
        kind = self.kernels.get(key)
        if kind is None:  # not chosen beforehand (eager use): resolve once, keep
            kind = self.kernels[key] = resolve_backend(self.backend, q)
        return kind

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        kind = self.kernel_for(q)
        if self.sp is None:
            return run_kernel(kind, q, k, v)
        return self.sp.attention(q, k, v, self.txt_len, self.valid_img, kind)


Segments = tuple[tuple[int, bool], ...]  # (tokens of the whole sequence, split over sequence-parallel ranks)


class SegmentAttentionCore(AttentionCore):
    """Attention whose queries and keys are each a concatenation of segments, some split over the
    sequence-parallel ranks (video, audio tokens), some replicated on every rank (text): the audio
    stream's cross-modal attention. Without sequence parallelism the segments are plain concatenations."""

    def forward(self, q: Tensor, k: Tensor, v: Tensor, q_segments: Segments = (), kv_segments: Segments = ()) -> Tensor:
        kind = self.kernel_for(q)
        if self.sp is None:
            return run_kernel(kind, q, k, v)
        return self.sp.segment_attention(q, k, v, q_segments, kv_segments, kind)
