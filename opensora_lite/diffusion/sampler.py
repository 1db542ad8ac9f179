"""Euler sampling of the rectified flow from noise (t=1) to data (t=0) with text CFG.

For image-to-video the condition (mask + masked reference latents) is given to both CFG branches;
only the text is dropped in the unconditional one.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor, nn

from opensora_lite.diffusion import flow
from opensora_lite.diffusion.objective import tokens_per_frame


@torch.no_grad()
def sample_latents(
    model: nn.Module,
    noise: Tensor,
    t5: Tensor,
    clip: Tensor,
    empty: tuple[Tensor, Tensor],
    cfg: flow.FlowConfig,
    patch: list[int],
    num_steps: int,
    cfg_scale: float,
    cond: Tensor | None = None,
    autocast: AbstractContextManager | None = None,
) -> Tensor:
    """Latents for the prompts encoded in (t5, clip), starting from `noise` [B, C, T, H, W]."""
    per_frame, frames = tokens_per_frame(noise, patch)
    times = flow.sampling_schedule(cfg, num_steps, per_frame, frames).tolist()
    b = noise.shape[0]
    guided = cfg_scale != 1.0
    if guided:
        t5 = torch.cat([t5, empty[0].expand_as(t5)])
        clip = torch.cat([clip, empty[1].expand_as(clip)])
        cond = None if cond is None else torch.cat([cond, cond])
    x = noise
    for t_cur, t_next in zip(times[:-1], times[1:]):
        xin = torch.cat([x, x]) if guided else x
        tt = torch.full((xin.shape[0],), t_cur, device=x.device)
        with autocast or nullcontext():
            v = model(xin, tt, t5, clip, cond=cond).float()
        if guided:
            v_cond, v_uncond = v[:b], v[b:]
            v = v_uncond + cfg_scale * (v_cond - v_uncond)
        x = flow.euler_step(x, v, t_cur, t_next)
    return x
