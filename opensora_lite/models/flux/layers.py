"""Building blocks of the Flux MMDiT, named after the BFL checkpoint so real FLUX.1 weights load."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from opensora_lite.models.flux.rope import norm_rope


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0, time_factor: float = 1000.0) -> Tensor:
    """Sinusoidal embedding of timesteps in [0, 1] (Flux convention: scaled by 1000, cos before sin)."""
    t = time_factor * t.float()
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class MLPEmbedder(nn.Module):
    """Two-layer SiLU MLP (time_in, vector_in, guidance_in)."""

    def __init__(self, in_dim: int, hidden_dim: int):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim, bias=True)
        self.silu = nn.SiLU()
        self.out_layer = nn.Linear(hidden_dim, hidden_dim, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_layer(self.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    """RMS norm computed in fp32 with a learned `scale` (BFL name)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.to(dtype) * self.scale.to(dtype)


class QKNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.query_norm = RMSNorm(dim)
        self.key_norm = RMSNorm(dim)

    def forward(self, q: Tensor, k: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        return self.query_norm(q).to(like.dtype), self.key_norm(k).to(like.dtype)

    def with_rope(self, q: Tensor, k: Tensor, like: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        """forward() then RoPE on both, fused into one pass each (model.fused_qk_norm_rope)."""
        qn, kn = self.query_norm, self.key_norm
        q = norm_rope(q, qn.scale, qn.eps, cos, sin, like.dtype)
        return q, norm_rope(k, kn.scale, kn.eps, cos, sin, like.dtype)


@dataclass
class ModulationOut:
    shift: Tensor
    scale: Tensor
    gate: Tensor

    def modulate(self, x: Tensor) -> Tensor:
        return torch.addcmul(self.shift, x, 1 + self.scale)

    def residual(self, x: Tensor, out: Tensor) -> Tensor:
        """x + gate * out, in one pass."""
        return torch.addcmul(x, self.gate, out)


class Modulation(nn.Module):
    """AdaLN modulation from the conditioning vector: 3 (single) or 6 (double) chunks of `dim`."""

    def __init__(self, dim: int, double: bool):
        super().__init__()
        self.is_double = double
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim, bias=True)

    def forward(self, vec: Tensor) -> tuple[ModulationOut, ModulationOut | None]:
        out = self.lin(F.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1)
        first = ModulationOut(*out[:3])
        return first, (ModulationOut(*out[3:]) if self.is_double else None)


def layer_norm(dim: int) -> nn.LayerNorm:
    """The affine-free LayerNorm Flux uses before every modulation."""
    return nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)


def gelu_tanh() -> nn.GELU:
    return nn.GELU(approximate="tanh")
