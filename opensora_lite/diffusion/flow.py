"""Rectified flow: noising, velocity targets and timestep sampling (t=1 is pure noise).

    x_t = (1 - t) * x_0 + (1 - (1 - sigma_min) * (1 - t)) * eps
    v   = d x_t / d t = (1 - sigma_min) * eps - x_0      (the model predicts v; the loss is MSE)

Timesteps: logit-normal t = sigmoid(N(mean, std)), then the resolution- and duration-dependent shift
t' = a t / (1 + (a - 1) t), with a = lerp over tokens per latent frame (base_tokens -> base_shift,
max_tokens -> max_shift) times sqrt(latent frames) (Open-Sora 2.0's rule).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from opensora_lite.config.schema import FlowConfig


def shift_alpha(cfg: FlowConfig, tokens_per_frame: int, latent_frames: int) -> float:
    """The shift factor for a bucket; 1.0 means no shift."""
    if not cfg.shift:
        return 1.0
    slope = (cfg.max_shift - cfg.base_shift) / (cfg.max_tokens - cfg.base_tokens)
    alpha = cfg.base_shift + slope * (tokens_per_frame - cfg.base_tokens)
    if cfg.temporal_shift:
        alpha *= math.sqrt(latent_frames)
    if alpha <= 0:
        raise ValueError(f"time shift {alpha:.3f} <= 0 for {tokens_per_frame} tokens/frame: check flow.base_*/max_*")
    return alpha


def time_shift(alpha: float, t: Tensor) -> Tensor:
    """SD3/Flux shift: maps [0, 1] onto itself, alpha > 1 moves mass towards noise (t -> 1)."""
    return alpha * t / (1 + (alpha - 1) * t)


def sample_timesteps(
    cfg: FlowConfig, batch: int, tokens_per_frame: int, latent_frames: int, generator: torch.Generator | None = None
) -> Tensor:
    """Training timesteps [batch]: logit-normal, shifted for this bucket's size."""
    device = generator.device if generator is not None else None
    normal = torch.randn(batch, generator=generator, device=device) * cfg.logit_std + cfg.logit_mean
    return time_shift(shift_alpha(cfg, tokens_per_frame, latent_frames), torch.sigmoid(normal))


def sampling_schedule(cfg: FlowConfig, num_steps: int, tokens_per_frame: int, latent_frames: int) -> Tensor:
    """num_steps + 1 decreasing times from 1 to 0, shifted like training."""
    return time_shift(shift_alpha(cfg, tokens_per_frame, latent_frames), torch.linspace(1, 0, num_steps + 1))


def _bcast(t: Tensor, like: Tensor) -> Tensor:
    return t.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def add_noise(x0: Tensor, noise: Tensor, t: Tensor, sigma_min: float) -> Tensor:
    """x_t on the straight path between data (t=0) and noise (t=1)."""
    tb = _bcast(t, x0)
    return (1 - tb) * x0 + (1 - (1 - sigma_min) * (1 - tb)) * noise


def velocity_target(x0: Tensor, noise: Tensor, sigma_min: float) -> Tensor:
    return (1 - sigma_min) * noise - x0


def euler_step(x: Tensor, v: Tensor, t: float, t_next: float) -> Tensor:
    """One Euler step along dx/dt = v from t to t_next (t_next < t when denoising)."""
    return x + (t_next - t) * v
