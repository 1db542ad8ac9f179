"""Shared by the Flux benchmark scripts: a diffusers FluxTransformer2DModel and our MMDiT holding the
same random weights, inputs for both, and each model's forward on them."""

from __future__ import annotations

import torch

from benchmarks.flux_reference import diffusers_forward, matching_mmdit, random_diffusers_flux
from opensora_lite.models.flux.rope import video_position_ids


def pair(double, single, heads, head_dim, axes, guidance, text_dim, vec_dim, seed=0, std=0.02, device="cpu"):
    """A diffusers Flux model with random weights, and ours with the same weights (both fp32), each built
    once, directly on `device` (a GPU initialises a Flux-width model in a moment; a CPU takes ~20 s)."""
    with torch.device(device):
        ref = random_diffusers_flux(
            double, single, heads, head_dim, axes, guidance, text_dim, vec_dim, std=std, seed=seed
        )
    return matching_mmdit(ref), ref


def make_inputs(grid, text_tokens, text_dim, vec_dim, guidance, device, dtype, batch=1):
    g = torch.Generator().manual_seed(1)
    ids = video_position_ids(*grid)
    x = {
        "img": torch.randn(batch, ids.shape[0], 64, generator=g),
        "txt": torch.randn(batch, text_tokens, text_dim, generator=g),
        "y": torch.randn(batch, vec_dim, generator=g),
        "t": torch.rand(batch, generator=g),
    }
    x = {k: v.to(device, dtype if k != "t" else torch.float32) for k, v in x.items()}
    x["img_ids"], x["txt_ids"] = ids.to(device), torch.zeros(text_tokens, 3, device=device)
    x["guidance"] = torch.full((batch,), 3.5, device=device) if guidance else None
    return x


def run_ours(model, x):
    return model.forward_tokens(x["img"], x["img_ids"], x["txt"], x["txt_ids"], x["t"], x["y"], guidance=x["guidance"])


def run_ref(model, x):
    return diffusers_forward(model, x["img"], x["img_ids"], x["txt"], x["txt_ids"], x["t"], x["y"], x["guidance"])
