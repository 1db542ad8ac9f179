"""Image-to-video conditioning: which latent frames are given, as a mask plus masked latents.

Tasks (Open-Sora 2.0's names): t2v (nothing given), i2v_head (first frame), i2v_tail (last frame),
i2v_loop (first and last frames). The condition tensor is cat(mask [B,1,T,H,W], masked [B,C,T,H,W]);
the model adds a zero-initialised projection of it to its patch embedding.
"""

from __future__ import annotations

import torch
from torch import Tensor

TASKS = ("t2v", "i2v_head", "i2v_tail", "i2v_loop")


def given_frames(task: str, latent_frames: int) -> list[int]:
    """Latent frame indices a task conditions on."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
    if task == "t2v" or latent_frames < 2:
        return []
    return {"i2v_head": [0], "i2v_tail": [latent_frames - 1], "i2v_loop": [0, latent_frames - 1]}[task]


def sample_tasks(weights: dict[str, float], batch: int, generator: torch.Generator | None = None) -> list[str]:
    """Draw one task per sample with the given relative weights."""
    names = [k for k, w in weights.items() if w > 0]
    if not names:
        raise ValueError("task weights are all zero")
    probs = torch.tensor([float(weights[k]) for k in names])
    picks = torch.multinomial(probs, batch, replacement=True, generator=generator)
    return [names[i] for i in picks.tolist()]


def build_condition(tasks: list[str], head: Tensor, tail: Tensor, latent_frames: int) -> Tensor:
    """Condition [B, C+1, T, H, W] from per-sample tasks and the separately encoded first/last frames.

    head/tail: [B, C, 1, H, W] latents of the first and last video frame encoded on their own (with a
    causal autoencoder these differ from slices of the clip latent, which is what inference sees).
    """
    b, c, _, h, w = head.shape
    mask = head.new_zeros(b, 1, latent_frames, h, w)
    masked = head.new_zeros(b, c, latent_frames, h, w)
    for i, task in enumerate(tasks):
        for f in given_frames(task, latent_frames):
            mask[i, :, f] = 1
            masked[i, :, f] = (head if f == 0 else tail)[i, :, 0]
    return torch.cat((mask, masked), dim=1)
