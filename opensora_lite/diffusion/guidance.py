"""Guidance rules of the sampler, as pure functions (Open-Sora 2.0's, from their inference code).

Text CFG has two branches: v = v_empty + s_text * (v_text - v_empty).

Three-way guidance (image-to-video, video extension) adds a branch without the visual condition:

    v = v_none + s_image * (v_empty - v_none) + s_text * (v_text - v_empty)

with v_text = model(x, text, condition), v_empty = model(x, empty text, condition) and
v_none = model(x, empty text, no condition). With s_image = 1 it is text CFG with the condition in both
branches.

Oscillation: after `warmup` steps, odd steps use scale 1 (no guidance), which Open-Sora uses against
over-saturation. The image ramp (Open-Sora's `scale_temporal_osci`) lowers the image scale over the
denoising steps (from s_image at the first step to 1 at the last) and, within a step, raises it along
latent time from 1 at the first latent frame to that step's value at the last (for i2v_head: frames
far from the reference are pulled towards it more; Open-Sora applies the same rule to every i2v task).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Guidance:
    """Guidance settings of one sampling run (from the `sample` config)."""

    text_scale: float = 7.5
    image_scale: float | None = None  # None: no third branch (the condition goes to both text branches)
    text_oscillation: bool = False
    image_oscillation: bool = False
    image_ramp: bool = False  # only for image-to-video tasks (Open-Sora keeps it off for t2v and v2v)
    oscillation_warmup: int = 10  # steps with full guidance before oscillation starts
    audio_scale: float | None = None  # with sound: the audio's text scale (None: text_scale, the video's)

    @property
    def three_way(self) -> bool:
        return self.image_scale is not None


def oscillated(scale: float, step: int, warmup: int = 10) -> float:
    """The scale at denoising step `step` (0-based) with oscillation: full for the first `warmup` steps
    and on even steps after them, 1 (unguided) on odd steps after them."""
    if step < warmup or step % 2 == 0:
        return scale
    return 1.0


def image_ramp(scale: float, step: int, num_steps: int, latent_frames: int) -> Tensor:
    """Per-latent-frame image scale [latent_frames] at `step` of `num_steps`: the step's ceiling goes
    linearly from `scale` (step 0) to 1 (after the last step); frames go linearly from 1 to the ceiling."""
    if scale <= 1.0:
        return torch.full((latent_frames,), float(scale))
    ceiling = float(torch.linspace(scale, 1.0, num_steps + 1)[step])
    return torch.linspace(1.0, ceiling, latent_frames)


def step_scales(g: Guidance, step: int, num_steps: int, latent_frames: int, ramp: bool) -> tuple[float, Tensor | float]:
    """(text scale, image scale) at one step; the image scale is a [T] tensor when the ramp is on."""
    text = oscillated(g.text_scale, step, g.oscillation_warmup) if g.text_oscillation else g.text_scale
    image = g.image_scale if g.image_scale is not None else 1.0
    if g.image_oscillation:
        image = oscillated(image, step, g.oscillation_warmup)
    if ramp and g.image_ramp and image > 1.0:
        return text, image_ramp(image, step, num_steps, latent_frames)
    return text, image


def combine(v_text: Tensor, v_empty: Tensor, v_none: Tensor | None, text_scale: float, image_scale) -> Tensor:
    """The guided velocity from the branches ([B, C, T, H, W]); `image_scale` a float or a [T] tensor.
    Without `v_none` (no third branch) it is text CFG."""
    if v_none is None:
        return v_empty + text_scale * (v_text - v_empty)
    if isinstance(image_scale, Tensor):
        image_scale = image_scale.to(v_text.device, v_text.dtype).view(1, 1, -1, 1, 1)
    return v_none + image_scale * (v_empty - v_none) + text_scale * (v_text - v_empty)
