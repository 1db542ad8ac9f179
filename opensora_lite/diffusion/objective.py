"""The training objective: one rectified-flow loss evaluation on a batch of latents."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from opensora_lite.diffusion import flow


def drop_text(
    t5: Tensor, clip: Tensor, empty: tuple[Tensor, Tensor], probs: dict[str, float], generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Replace each encoder's output by the empty prompt's, independently per sample (for CFG)."""
    b = t5.shape[0]
    drop_t5 = (torch.rand(b, generator=generator) < probs.get("t5", 0.0)).to(t5.device)
    drop_clip = (torch.rand(b, generator=generator) < probs.get("clip", 0.0)).to(clip.device)
    t5 = torch.where(drop_t5[:, None, None], empty[0].to(t5.dtype), t5)
    clip = torch.where(drop_clip[:, None], empty[1].to(clip.dtype), clip)
    return t5, clip


def tokens_per_frame(latents: Tensor, patch: list[int]) -> tuple[int, int]:
    """(tokens per latent frame, latent frames after temporal patching) for the timestep shift."""
    _, _, t, h, w = latents.shape
    return (h // patch[1]) * (w // patch[2]), t // patch[0]


def flow_loss(
    model: nn.Module,
    x0: Tensor,
    t5: Tensor,
    clip: Tensor,
    cond: Tensor | None,
    cfg: flow.FlowConfig,
    patch: list[int],
    generator: torch.Generator,
    autocast: AbstractContextManager | None = None,
    noise_generator: torch.Generator | None = None,
) -> Tensor:
    """MSE between predicted and straight-line velocity at logit-normal, size-shifted times. The times come
    from `generator`; the noise from `noise_generator` (default: `generator`) on that generator's device,
    so a CUDA generator draws it where the model trains."""
    per_frame, frames = tokens_per_frame(x0, patch)
    t = flow.sample_timesteps(cfg, x0.shape[0], per_frame, frames, generator).to(x0.device)
    noise_gen = generator if noise_generator is None else noise_generator
    noise = torch.randn(x0.shape, generator=noise_gen, device=noise_gen.device).to(x0.device)
    xt = flow.add_noise(x0, noise, t, cfg.sigma_min)
    with autocast or nullcontext():
        pred = model(xt, t, t5, clip, cond=cond)
    return F.mse_loss(pred.float(), flow.velocity_target(x0, noise, cfg.sigma_min))
