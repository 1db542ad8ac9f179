"""diffusers' FluxTransformer2DModel as a reference for our MMDiT: build one with random weights, build
our model with the same architecture and weights, and run diffusers' forward on packed tokens. Used by
the parity tests and the benchmark scripts."""

from __future__ import annotations

import torch
from torch import Tensor

from opensora_lite.models.flux import SPEC as FLUX
from opensora_lite.models.flux.convert import diffusers_to_bfl
from opensora_lite.models.flux.model import MMDiT, MMDiTConfig
from opensora_lite.models.loading import load_into


def random_diffusers_flux(
    double: int,
    single: int,
    heads: int,
    head_dim: int,
    axes,
    guidance: bool,
    text_dim: int,
    vec_dim: int,
    in_channels: int = 64,
    std: float = 0.02,
    seed: int = 0,
):
    """A FluxTransformer2DModel with normal(0, std) weights everywhere (diffusers zero-initialises some
    output layers; random everywhere tests more)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    ref = FluxTransformer2DModel(
        patch_size=1,
        in_channels=in_channels,
        num_layers=double,
        num_single_layers=single,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=text_dim,
        pooled_projection_dim=vec_dim,
        guidance_embeds=guidance,
        axes_dims_rope=tuple(axes),
    )
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * std)
    return ref


def matching_mmdit(ref, backend: str = "auto", load: bool = True) -> MMDiT:
    """Our MMDiT with `ref`'s architecture (2x2 patches of in_channels/4 latent channels) and, with
    `load`, its weights converted to BFL names: then it is built on the meta device and allocated on
    `ref`'s device (the load sets every value: no initialisation work, no CPU copy of a large model)."""
    c = ref.config
    cfg = MMDiTConfig(
        latent_channels=c.in_channels // 4,
        patch_size=[1, 2, 2],
        hidden_size=c.num_attention_heads * c.attention_head_dim,
        num_heads=c.num_attention_heads,
        depth=c.num_layers,
        depth_single_blocks=c.num_single_layers,
        axes_dim=list(c.axes_dims_rope),
        context_in_dim=c.joint_attention_dim,
        vec_in_dim=c.pooled_projection_dim,
        guidance_embed=c.guidance_embeds,
        attention_backend=backend,
    )
    if not load:
        return MMDiT(cfg)
    with torch.device("meta"):
        ours = MMDiT(cfg)
    ours.to_empty(device=next(ref.parameters()).device)
    report = load_into(ours, diffusers_to_bfl(ref.state_dict()), "diffusers", FLUX.optional_keys())
    if report.missing or report.unexpected:
        raise AssertionError(report.summary())
    return ours


def diffusers_forward(
    ref, img: Tensor, img_ids: Tensor, txt: Tensor, txt_ids: Tensor, t: Tensor, y: Tensor, guidance=None
):
    """diffusers' forward with our forward_tokens' argument order."""
    return ref(
        hidden_states=img,
        encoder_hidden_states=txt,
        pooled_projections=y,
        timestep=t,
        img_ids=img_ids,
        txt_ids=txt_ids,
        guidance=guidance,
        return_dict=False,
    )[0]
