"""Shared by the Flux benchmark scripts: a diffusers FluxTransformer2DModel and our MMDiT holding the
same random weights, inputs for both, and each model's forward on them."""

from __future__ import annotations

import torch
from diffusers import FluxTransformer2DModel

from opensora_lite.models.flux_convert import diffusers_to_bfl
from opensora_lite.models.flux_weights import load_into
from opensora_lite.models.mmdit import MMDiT, MMDiTConfig
from opensora_lite.models.rope import video_position_ids


def pair(double, single, heads, head_dim, axes, guidance, text_dim, vec_dim, seed=0, std=0.02):
    """A diffusers Flux model with random weights, and ours with the same weights (both fp32, CPU)."""
    torch.manual_seed(seed)
    ref = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=double,
        num_single_layers=single,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=text_dim,
        pooled_projection_dim=vec_dim,
        guidance_embeds=guidance,
        axes_dims_rope=axes,
    )
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * std)
    cfg = MMDiTConfig(
        latent_channels=16,
        hidden_size=heads * head_dim,
        num_heads=heads,
        depth=double,
        depth_single_blocks=single,
        axes_dim=list(axes),
        context_in_dim=text_dim,
        vec_in_dim=vec_dim,
        guidance_embed=guidance,
    )
    ours = MMDiT(cfg)
    report = load_into(ours, diffusers_to_bfl(ref.state_dict()), "diffusers")
    assert not report.missing and not report.unexpected, report.summary()
    return ours, ref


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
    return model(
        hidden_states=x["img"],
        encoder_hidden_states=x["txt"],
        pooled_projections=x["y"],
        timestep=x["t"],
        img_ids=x["img_ids"],
        txt_ids=x["txt_ids"],
        guidance=x["guidance"],
        return_dict=False,
    )[0]
