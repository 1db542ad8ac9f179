"""Few-step distillation by distribution matching (DMD2, Yin et al. 2024), on the rectified flow of
diffusion/flow.py, as pure functions over velocity models `model(x, t, t5, clip, cond=...)`.

The student G samples in a few Euler steps without guidance. At its step k (flow time t_k of its schedule)
it predicts clean latents x0_hat = x_t - t_k v_G(x_t) (exactly, with sigma_min: `predict_x0`). Two scores
judge x0_hat after noising it again to a random time tau:

- the real score: the frozen teacher with its guidance (so the student learns the guided model's
  outputs, one forward a step instead of two or three);
- the fake score: a critic of the teacher's architecture, trained by the flow objective on the student's
  own samples, so it tracks the distribution the student generates now.

Their clean-latent predictions differ where the student's distribution differs from the teacher's; the
student's gradient is (x0_fake - x0_real), normalised per sample by the mean |x0_hat - x0_real| (DMD's
weighting), applied through the target trick: loss = 0.5 |x0_hat - sg(x0_hat - grad)|^2, whose gradient
with respect to x0_hat is that direction. DMD2 drops DMD1's regression loss and trains the critic
several times per student update (`critic_steps`); its optional GAN term is not built here.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from opensora_lite.diffusion import flow
from opensora_lite.diffusion.guidance import Guidance, combine
from opensora_lite.diffusion.sampler import guidance_branches


def step_flops(forward: float, train: float, simulated: float, branches: int, critic_steps: int) -> float:
    """FLOPs of one sample's distill step from a model's forward and training (forward + backward) FLOPs:
    the student's `simulated` forwards to reach its step (backward simulation) and its trained pass, the
    teacher's guided forward over `branches`, the critic's scoring forward and its `critic_steps` trained
    passes. With DMD2's 5 critic updates and three-way guidance, about 8x a diffusion step's."""
    return forward * (simulated + branches + 1) + train * (1 + critic_steps)


def predict_x0(xt: Tensor, v: Tensor, t: Tensor, sigma_min: float) -> Tensor:
    """The clean latents a velocity `v` at `xt`, time `t` [B] points to, on flow.py's path:
    x_t = (1 - t) x0 + s eps and v = (1 - sigma_min) eps - x0 with s = 1 - (1 - sigma_min)(1 - t),
    so x0 = (x_t - s v / (1 - sigma_min)) / ((1 - t) + s / (1 - sigma_min)); x_t - t v at sigma_min 0."""
    tb = t.to(xt.dtype).view(-1, *([1] * (xt.dim() - 1)))
    s = 1 - (1 - sigma_min) * (1 - tb)
    return (xt - s * v / (1 - sigma_min)) / ((1 - tb) + s / (1 - sigma_min))


def guided_velocity(
    model: Callable[..., Tensor],
    x: Tensor,
    t: Tensor,
    t5: Tensor,
    clip: Tensor,
    empty: tuple[Tensor, Tensor],
    guidance: Guidance,
    cond: Tensor | None = None,
) -> Tensor:
    """The teacher's guided velocity at (x, t): text CFG, or three-way guidance where a condition is given
    and guidance.image_scale is set (fixed scales: no oscillation, no ramp). One batched forward."""
    given = cond is not None and bool(cond[:, 0].any())
    third = guidance.three_way and given
    branches = guidance_branches(guidance, given)
    if branches == 1:
        return model(x, t, t5, clip, cond=cond).float()
    b = x.shape[0]
    empty_t5, empty_clip = (e.to(t5.dtype).expand_as(v) for e, v in zip(empty, (t5, clip)))
    t5_in = torch.cat([t5, empty_t5, empty_t5][:branches])
    clip_in = torch.cat([clip, empty_clip, empty_clip][:branches])
    cond_in = None if cond is None else torch.cat([cond, cond, torch.zeros_like(cond)][:branches])
    v = model(torch.cat([x] * branches), torch.cat([t] * branches), t5_in, clip_in, cond=cond_in).float()
    parts = v.split(b)
    image_scale = guidance.image_scale if third else 1.0
    return combine(parts[0], parts[1], parts[2] if third else None, guidance.text_scale, image_scale)


def dmd_loss(
    x0_hat: Tensor,
    teacher: Callable[..., Tensor],
    critic: Callable[..., Tensor],
    t5: Tensor,
    clip: Tensor,
    empty: tuple[Tensor, Tensor],
    guidance: Guidance,
    cond: Tensor | None,
    tau: Tensor,
    noise: Tensor,
    sigma_min: float,
    autocast: AbstractContextManager | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """DMD's loss on the student's clean-latent prediction `x0_hat` (with its graph): noised to `tau` [B]
    with `noise`, scored by the guided teacher (real) and the critic (fake). Returns the loss and figures:
    `dmd_gap` the mean |x0_hat - x0_real| (how far the student is from what the teacher makes of its
    samples), `score_gap` the mean |x0_fake - x0_real| before weighting."""
    with torch.no_grad():
        xt = flow.add_noise(x0_hat.detach(), noise, tau, sigma_min)
        with autocast or nullcontext():
            v_real = guided_velocity(teacher, xt, tau, t5, clip, empty, guidance, cond)
            v_fake = critic(xt, tau, t5, clip, cond=cond).float()
        x0_real, x0_fake = predict_x0(xt, v_real, tau, sigma_min), predict_x0(xt, v_fake, tau, sigma_min)
        dims = tuple(range(1, x0_hat.dim()))
        gap = (x0_hat.detach().float() - x0_real).abs().mean(dim=dims, keepdim=True)
        grad = (x0_fake - x0_real) / gap.clamp(min=1e-6)
        target = x0_hat.detach().float() - grad
    loss = 0.5 * F.mse_loss(x0_hat.float(), target)
    return loss, {"dmd_gap": float(gap.mean()), "score_gap": float((x0_fake - x0_real).abs().mean())}


def critic_loss(
    critic: Callable[..., Tensor],
    x0: Tensor,
    t5: Tensor,
    clip: Tensor,
    cond: Tensor | None,
    t: Tensor,
    noise: Tensor,
    sigma_min: float,
    autocast: AbstractContextManager | None = None,
) -> Tensor:
    """The fake score's objective: the flow loss of the critic on the student's samples `x0` (detached)."""
    xt = flow.add_noise(x0, noise, t, sigma_min)
    with autocast or nullcontext():
        pred = critic(xt, t, t5, clip, cond=cond)
    return F.mse_loss(pred.float(), flow.velocity_target(x0, noise, sigma_min))
