"""Euler sampling of the rectified flow from noise (t=1) to data (t=0) with guidance.

Branches per step (batched into one forward): text + condition, empty text + condition, and with
three-way guidance empty text without the condition (diffusion/guidance.py). A model without an
image condition gets text CFG only; with a condition and no image scale, the condition goes to both
text branches. When no frame is given (t2v on an I2V model) the third branch equals the second and
is skipped. After the last step the given latents are written back into their frames.

With sound (a model with an audio stream, diffusion/av.py's tasks), `sample_av_latents` steps both
streams through the spec's forward_av, each with its own text guidance scale; a given modality (the
video of v2a) stays clean at time 0 throughout.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor

from opensora_lite.diffusion import flow
from opensora_lite.diffusion.av import Flags
from opensora_lite.diffusion.conditioning import write_back
from opensora_lite.diffusion.guidance import Guidance, combine, oscillated, step_scales
from opensora_lite.diffusion.objective import tokens_per_frame


def guidance_branches(g: Guidance, given: bool) -> int:
    """Model evaluations per sample and step: the text branch, the empty-text one when text guidance is on
    (or a third branch needs it), the no-condition one of three-way guidance when a condition is given."""
    third = g.three_way and given
    return 1 + (g.text_scale != 1.0 or third) + third


@torch.no_grad()
def sample_latents(
    model: Callable[..., Tensor],
    noise: Tensor,
    t5: Tensor,
    clip: Tensor,
    empty: tuple[Tensor, Tensor],
    cfg: flow.FlowConfig,
    patch: list[int],
    num_steps: int,
    guidance: Guidance | float,
    cond: Tensor | None = None,
    autocast: AbstractContextManager | None = None,
    image_task: bool = False,
) -> Tensor:
    """Latents for the prompts encoded in (t5, clip), starting from `noise` [B, C, T, H, W]. `model` is
    the velocity: model(x, t, t5, clip, cond=...) (a family's spec.forward bound to a model).

    `guidance`: a Guidance, or a float for plain text CFG. `image_task`: the condition gives single
    frames (i2v), where the image-scale ramp applies."""
    g = guidance if isinstance(guidance, Guidance) else Guidance(text_scale=float(guidance))
    per_frame, frames = tokens_per_frame(noise, patch)
    times = flow.sampling_schedule(cfg, num_steps, per_frame, frames).tolist()
    b = noise.shape[0]
    given = cond is not None and bool(cond[:, 0].any())
    third = g.three_way and given
    branches = guidance_branches(g, given)
    empty_t5, empty_clip = (e.to(t5.dtype).expand_as(x) for e, x in zip(empty, (t5, clip)))
    t5_in = torch.cat([t5, empty_t5, empty_t5][:branches])
    clip_in = torch.cat([clip, empty_clip, empty_clip][:branches])
    cond_in = None if cond is None else torch.cat([cond, cond, torch.zeros_like(cond)][:branches])
    x = noise
    for i, (t_cur, t_next) in enumerate(zip(times[:-1], times[1:])):
        xin = torch.cat([x] * branches)
        tt = torch.full((xin.shape[0],), t_cur, device=x.device)
        with autocast or nullcontext():
            v = model(xin, tt, t5_in, clip_in, cond=cond_in).float()
        if branches > 1:
            text_scale, image_scale = step_scales(g, i, num_steps, noise.shape[2], ramp=image_task)
            parts = v.split(b)
            v = combine(parts[0], parts[1], parts[2] if third else None, text_scale, image_scale)
        x = flow.euler_step(x, v, t_cur, t_next)
    return x if not given else write_back(x, cond)


@torch.no_grad()
def sample_av_latents(
    forward_av: Callable[..., tuple[Tensor, Tensor]],
    video: Tensor,
    audio: Tensor,
    flags: Flags,
    t5: Tensor,
    clip: Tensor,
    empty: tuple[Tensor, Tensor],
    cfg: flow.FlowConfig,
    patch: list[int],
    num_steps: int,
    guidance: Guidance,
    cond: Tensor | None = None,
    autocast: AbstractContextManager | None = None,
) -> tuple[Tensor, Tensor]:
    """(video latents, audio latents) from both streams at once. `video` [B, C, T, H, W] and `audio`
    [B, C_a, T_a, F_a] hold noise where `flags` says the sample's modality is generated and the clean
    latents where it is given (diffusion/av.py: a given modality stays as it is, at flow time 0, as in
    training). forward_av(x, t, a, ta, t5, clip, cond) gives both velocities.

    Each modality steps on its own schedule, the one it was trained on: the video's shifted for its
    size, the audio's unshifted (training draws its times without a shift). Text guidance has a scale
    per modality, `guidance.text_scale` for the video and `guidance.audio_scale` for the audio (oscillated
    alike when text_oscillation is on): the two branches (text, empty text) give both velocities, and
    each is combined with its own scale."""
    per_frame, frames = tokens_per_frame(video, patch)
    v_times = flow.sampling_schedule(cfg, num_steps, per_frame, frames).tolist()
    a_times = torch.linspace(1, 0, num_steps + 1).tolist()
    b = video.shape[0]
    audio_scale = guidance.text_scale if guidance.audio_scale is None else guidance.audio_scale
    branches = 1 + (guidance.text_scale != 1.0 or audio_scale != 1.0)
    empty_t5, empty_clip = (e.to(t5.dtype).expand_as(x) for e, x in zip(empty, (t5, clip)))
    t5_in, clip_in = torch.cat([t5, empty_t5][:branches]), torch.cat([clip, empty_clip][:branches])
    cond_in = None if cond is None else torch.cat([cond] * branches)
    gen_v, gen_a = flags.video.to(video.device), flags.audio.to(video.device)
    keep_v, keep_a = gen_v.view(-1, 1, 1, 1, 1), gen_a.view(-1, 1, 1, 1)
    x, a = video, audio
    for i in range(num_steps):
        tv = torch.where(gen_v, v_times[i], 0.0).repeat(branches)
        ta = torch.where(gen_a, a_times[i], 0.0).repeat(branches)
        with autocast or nullcontext():
            v, va = forward_av(torch.cat([x] * branches), tv, torch.cat([a] * branches), ta, t5_in, clip_in, cond_in)
        v, va = v.float(), va.float()
        if branches > 1:
            text_scale = step_scales(guidance, i, num_steps, frames, ramp=False)[0]
            a_scale = (
                oscillated(audio_scale, i, guidance.oscillation_warmup) if guidance.text_oscillation else audio_scale
            )
            v = combine(*v.split(b), None, text_scale, 1.0)
            va = combine(*va.split(b), None, a_scale, 1.0)
        x = torch.where(keep_v, flow.euler_step(x, v, v_times[i], v_times[i + 1]), x)
        a = torch.where(keep_a, flow.euler_step(a, va, a_times[i], a_times[i + 1]), a)
    return x, a
