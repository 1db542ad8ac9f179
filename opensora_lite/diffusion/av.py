"""Joint audio+video flow matching: per-modality noise, generated/given flags, losses and their balance.

Each sample's task says, per modality, whether it is *generated* (noised at its own flow time, in the
loss) or *given* (clean, at time 0, out of the loss), after LTX-2's trainer; one mechanism gives

| task | video | audio |
|---|---|---|
| `t2av` | generated | generated |
| `v2a` (foley) | given | generated |
| `a2v` | generated | given |
| `i2av` | generated from its first frame (the i2v_head condition) | generated |

Video and audio draw independent flow times (video: logit-normal with the bucket's shift, as T2V;
audio: logit-normal, unshifted), so one model learns every pairing of noise levels, which is what
separate audio and video guidance at sampling needs. A clip without sound (`has_audio` false) keeps
its audio out of the loss whatever its task.

The loss is w_video L_video + w_audio L_audio, each a mean over the samples that generate that
modality. `LossBalance` optionally divides each by its own running mean (`balance: running_mean`), so
each modality's gradient has a steady scale set by its weight, however far apart the two losses sit
(summed losses let the video drown the audio: reports of audio ~0.7 against video ~0.35).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from opensora_lite.diffusion import flow
from opensora_lite.diffusion.objective import tokens_per_frame

# task -> (video generated, audio generated, video conditioning task of diffusion/conditioning.py)
AV_TASKS = {
    "t2av": (True, True, "t2v"),
    "v2a": (False, True, "t2v"),
    "a2v": (True, False, "t2v"),
    "i2av": (True, True, "i2v_head"),
}
MODALITIES = ("video", "audio")
BALANCES = ("none", "running_mean")


@dataclass
class Flags:
    """Per-sample flags of a batch's tasks: which modality is generated (noised and in the loss)."""

    video: Tensor  # [B] bool
    audio: Tensor  # [B] bool
    video_tasks: list[str]  # the video conditioning task per sample (t2v, i2v_head)

    @classmethod
    def of(cls, tasks: list[str]) -> Flags:
        unknown = [t for t in tasks if t not in AV_TASKS]
        if unknown:
            raise ValueError(f"unknown audio-video task {unknown[0]!r}; choose from {tuple(AV_TASKS)}")
        video = torch.tensor([AV_TASKS[t][0] for t in tasks])
        audio = torch.tensor([AV_TASKS[t][1] for t in tasks])
        return cls(video, audio, [AV_TASKS[t][2] for t in tasks])

    def audio_in_loss(self, has_audio: Tensor | None) -> Tensor:
        """Samples whose audio is in the loss: generated, and from a clip with sound."""
        return self.audio if has_audio is None else self.audio & has_audio.to(torch.bool).cpu()


def noise(x0: Tensor, t: Tensor, generated: Tensor, sigma_min: float, generator: torch.Generator):
    """(x_t, t, velocity target) of one modality: generated samples on the flow path at t, given ones
    clean at time 0 (the noise is drawn for every sample, so the draws do not depend on the flags; on
    the generator's device)."""
    eps = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0.device)
    generated = generated.to(t.device)
    t = torch.where(generated, t, torch.zeros_like(t))
    keep = generated.view(-1, *([1] * (x0.dim() - 1)))
    xt = torch.where(keep, flow.add_noise(x0, eps, t, sigma_min), x0)  # exactly clean (sigma_min aside)
    return xt, t, flow.velocity_target(x0, eps, sigma_min)


def masked_mse(pred: Tensor, target: Tensor, keep: Tensor) -> tuple[Tensor, int]:
    """Mean over the kept samples of each sample's MSE, and how many were kept (0: a zero that still
    carries the graph, so every rank runs the same backward)."""
    per_sample = (pred.float() - target).pow(2).flatten(1).mean(1)
    keep = keep.to(per_sample.device, per_sample.dtype)
    count = int(keep.sum())
    return (per_sample * keep).sum() / max(count, 1), count


def av_flow_loss(
    forward_av: Callable[..., tuple[Tensor, Tensor]],
    x0: Tensor,
    a0: Tensor,
    flags: Flags,
    has_audio: Tensor | None,
    cfg: flow.FlowConfig,
    patch: list[int],
    generator: torch.Generator,
    autocast: AbstractContextManager | None = None,
    noise_generator: torch.Generator | None = None,
) -> dict[str, tuple[Tensor, int]]:
    """Per-modality flow losses {video: (loss, samples), audio: (loss, samples)} of one batch: video
    latents x0 [B, C, T, H, W], audio latents a0 [B, C_a, T_a, F_a]; forward_av(xt, t, at, ta) gives
    both velocities (the text and condition bound by the caller). Times come from `generator`, the
    noise from `noise_generator` (default: `generator`), as objective.flow_loss."""
    b = x0.shape[0]
    per_frame, frames = tokens_per_frame(x0, patch)
    t_video = flow.sample_timesteps(cfg, b, per_frame, frames, generator).to(x0.device)
    t_audio = torch.sigmoid(torch.randn(b, generator=generator) * cfg.logit_std + cfg.logit_mean).to(x0.device)
    noise_gen = generator if noise_generator is None else noise_generator
    xt, t_video, v_target = noise(x0, t_video, flags.video, cfg.sigma_min, noise_gen)
    at, t_audio, a_target = noise(a0, t_audio, flags.audio, cfg.sigma_min, noise_gen)
    with autocast or nullcontext():
        v_pred, a_pred = forward_av(xt, t_video, at, t_audio)
    return {
        "video": masked_mse(v_pred, v_target, flags.video),
        "audio": masked_mse(a_pred, a_target, flags.audio_in_loss(has_audio)),
    }


class LossBalance:
    """Combines the per-modality losses: sum of weight x loss, each loss divided by its running mean
    under `running_mean` (a detached normaliser, updated with the loss averaged over the ranks so all
    ranks agree; checkpointed, so a resume continues it exactly)."""

    def __init__(self, weights: dict[str, float], mode: str = "none", decay: float = 0.99):
        if mode not in BALANCES:
            raise ValueError(f"unknown balance {mode!r}; choose from {BALANCES}")
        self.weights, self.mode, self.decay = dict(weights), mode, decay
        self.means: dict[str, float] = {}

    def scales(self, observed: dict[str, float | None]) -> dict[str, float]:
        """Each modality's factor for this step, after folding `observed` (its loss averaged over the
        ranks; None: no sample generated it anywhere) into the running means."""
        out = {}
        for m, w in self.weights.items():
            value = observed.get(m)
            if self.mode == "running_mean" and value is not None:
                old = self.means.get(m)
                self.means[m] = value if old is None else self.decay * old + (1 - self.decay) * value
            mean = self.means.get(m) if self.mode == "running_mean" else None
            out[m] = w / max(mean, 1e-8) if mean is not None else w
        return out

    def combine(self, losses: dict[str, tuple[Tensor, int]], observed: dict[str, float | None]) -> Tensor:
        scales = self.scales(observed)
        return sum(scales[m] * losses[m][0] for m in self.weights)

    def state_dict(self) -> dict:
        return {"means": dict(self.means)}

    def load_state_dict(self, state: dict) -> None:
        self.means = dict(state.get("means", {}))
