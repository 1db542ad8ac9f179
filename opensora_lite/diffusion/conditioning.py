"""Visual conditioning: which latent frames are given, as a mask plus masked latents.

Tasks (Open-Sora 2.0's names): t2v (nothing given), i2v_head (first frame), i2v_tail (last frame),
i2v_loop (first and last frames), v2v_head / v2v_tail (the first / last k latent frames: video
extension forwards / backwards). The condition tensor is cat(mask [B,1,T,H,W], masked [B,C,T,H,W]);
the model adds a zero-initialised projection of it to its patch embedding.
"""

from __future__ import annotations

import torch
from torch import Tensor

TASKS = ("t2v", "i2v_head", "i2v_tail", "i2v_loop", "v2v_head", "v2v_tail")
V2V = ("v2v_head", "v2v_tail")


def given_frames(task: str, latent_frames: int, v2v_frames: int = 0) -> list[int]:
    """Latent frame indices a task conditions on (`v2v_frames`: k of the v2v tasks)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
    if task == "t2v" or latent_frames < 2:
        return []
    if task in V2V:
        k = min(v2v_frames, latent_frames - 1)  # at least one frame is generated
        return list(range(k)) if task == "v2v_head" else list(range(latent_frames - k, latent_frames))
    return {"i2v_head": [0], "i2v_tail": [latent_frames - 1], "i2v_loop": [0, latent_frames - 1]}[task]


def applicable(weights: dict[str, float], latent_frames: int, v2v_frames: int) -> dict[str, float]:
    """The task weights a clip of this length can use: v2v needs more latent frames than it is given
    (Open-Sora drops v2v tasks for short clips the same way). Without v2v tasks the weights are unchanged,
    so the task draws are too."""
    out = {t: w for t, w in weights.items() if t not in V2V or 1 <= v2v_frames < latent_frames}
    return out if any(w > 0 for w in out.values()) else {"t2v": 1.0}


def sample_tasks(weights: dict[str, float], batch: int, generator: torch.Generator | None = None) -> list[str]:
    """Draw one task per sample with the given relative weights."""
    names = [k for k, w in weights.items() if w > 0]
    if not names:
        raise ValueError("task weights are all zero")
    probs = torch.tensor([float(weights[k]) for k in names])
    picks = torch.multinomial(probs, batch, replacement=True, generator=generator)
    return [names[i] for i in picks.tolist()]


def build_condition(
    tasks: list[str],
    head: Tensor,
    tail: Tensor,
    latent_frames: int,
    video: Tensor | None = None,
    v2v_frames: int = 0,
) -> Tensor:
    """Condition [B, C+1, T, H, W] from per-sample tasks.

    head/tail: [B, C, 1, H, W] latents of the first and last video frame encoded on their own (with a
    causal autoencoder these differ from slices of the clip latent, which is what inference sees).
    video: [B, C, T, H, W] latents the v2v tasks take their given frames from (the clip's own latents
    in training; at inference the reference video's latents placed at the head or tail).
    """
    b, c, _, h, w = head.shape
    mask = head.new_zeros(b, 1, latent_frames, h, w)
    masked = head.new_zeros(b, c, latent_frames, h, w)
    for i, task in enumerate(tasks):
        for f in given_frames(task, latent_frames, v2v_frames):
            mask[i, :, f] = 1
            if task in V2V:
                if video is None:
                    raise ValueError(f"task {task} needs the video latents")
                masked[i, :, f] = video[i, :, f]
            else:
                masked[i, :, f] = (head if f == 0 else tail)[i, :, 0]
    return torch.cat((mask, masked), dim=1)


def write_back(latents: Tensor, cond: Tensor) -> Tensor:
    """The given latents put back into their frames after sampling (the generated ones kept elsewhere)."""
    mask = cond[:, :1]
    return torch.where(mask > 0, cond[:, 1:].to(latents.dtype), latents)


def uses_image_condition(tasks: dict[str, float]) -> bool:
    """A stage trains I2V/v2v (and its model gets an image condition) when any such task has weight; of an
    audio_video stage's tasks only i2av does (v2a and a2v give a whole modality clean, not through cond_in)."""
    return any(w > 0 for task, w in tasks.items() if task not in ("t2v", "t2av", "v2a", "a2v"))
