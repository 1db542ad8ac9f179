"""Rotary position embedding over N position axes, in Flux's layout.

Each token has one position per axis (Flux: (unused, h, w); video: (t, h, w); text: zeros). The head
dimension is split into `axes_dim` chunks, one per axis, and within a chunk adjacent channel pairs
(2i, 2i+1) are rotated by angle pos * theta^(-2i/d). This is exactly the rotation of the BFL reference
and of diffusers' FluxPosEmbed, so pretrained Flux attention sees the positions it was trained with.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rope_angles(pos: Tensor, dim: int, theta: float) -> Tensor:
    """Angles [..., n, dim/2] for positions `pos` [..., n] on one axis (computed in float64)."""
    if dim % 2:
        raise ValueError(f"RoPE axis dimension must be even, got {dim}")
    exponent = torch.arange(0, dim, 2, dtype=torch.float64, device=pos.device) / dim
    omega = 1.0 / (theta**exponent)
    return pos.to(torch.float64)[..., None] * omega


def rope_cos_sin(ids: Tensor, axes_dim: list[int] | tuple[int, ...], theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin tables [..., L, head_dim/2] (float32) for position ids [..., L, n_axes]."""
    if ids.shape[-1] != len(axes_dim):
        raise ValueError(f"ids have {ids.shape[-1]} axes but axes_dim has {len(axes_dim)}")
    angles = torch.cat([rope_angles(ids[..., i], d, theta) for i, d in enumerate(axes_dim)], dim=-1)
    return angles.cos().float(), angles.sin().float()


def _rotate(xf: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    pairs = xf.unflatten(-1, (-1, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate adjacent channel pairs of x [B, H, L, D] by tables [B or 1, 1, L, D/2]."""
    return _rotate(x.float(), cos, sin).type_as(x)


def norm_rope(x: Tensor, scale: Tensor, eps: float, cos: Tensor, sin: Tensor, dtype: torch.dtype) -> Tensor:
    """RMS norm with a learned `scale` over the head dim, then the RoPE rotation, in one fp32 pass:
    x [B, H, L, D] -> `dtype`. The separate path (RMSNorm, then apply_rope) casts down after the norm and
    up again for the rotation; here q/k go up once and down once (model.fused_qk_norm_rope)."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * scale.float()
    return _rotate(xf, cos, sin).to(dtype)


def video_position_ids(
    t: int,
    h: int,
    w: int,
    device: torch.device | None = None,
    t_offset: int = 0,
    reference_grid: list[int] | tuple[int, int] | None = None,
) -> Tensor:
    """(t, h, w) positions [t*h*w, 3] in raster order (time-major), float for RoPE.

    Positions are integers unless `reference_grid` (h, w) is given and the grid is larger along an
    axis: then that axis's positions are interpolated, i * ref / size, so they span the range the model
    was trained on (position interpolation). Smaller grids keep integer positions.
    """
    ref_h, ref_w = reference_grid if reference_grid is not None else (h, w)
    grid = torch.meshgrid(
        torch.arange(t, device=device, dtype=torch.float32) + t_offset,
        torch.arange(h, device=device, dtype=torch.float32) * min(1.0, ref_h / h),
        torch.arange(w, device=device, dtype=torch.float32) * min(1.0, ref_w / w),
        indexing="ij",
    )
    return torch.stack(grid, dim=-1).reshape(-1, 3)
