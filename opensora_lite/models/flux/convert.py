"""Flux checkpoints in diffusers' layout <-> the BFL layout our MMDiT uses.

diffusers' FluxTransformer2DModel holds the same tensors as the BFL checkpoint under other names, with
three differences of form: q, k and v are separate linears (BFL fuses them into one `qkv`); the
single-stream block's q, k, v and MLP input are four linears (BFL: one `linear1`); and the final
AdaLN emits (scale, shift) where BFL emits (shift, scale). One table of name pairs drives both
directions, so a key can never convert one way and not the other.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

# (BFL name, diffusers names, how): "same" is a rename; "cat" concatenates the diffusers tensors along
# dim 0 into the BFL one; "swap" exchanges the two halves along dim 0. {i} is a block index.
_GLOBAL = [
    ("img_in", ["x_embedder"], "same"),
    ("txt_in", ["context_embedder"], "same"),
    ("time_in.in_layer", ["time_text_embed.timestep_embedder.linear_1"], "same"),
    ("time_in.out_layer", ["time_text_embed.timestep_embedder.linear_2"], "same"),
    ("guidance_in.in_layer", ["time_text_embed.guidance_embedder.linear_1"], "same"),
    ("guidance_in.out_layer", ["time_text_embed.guidance_embedder.linear_2"], "same"),
    ("vector_in.in_layer", ["time_text_embed.text_embedder.linear_1"], "same"),
    ("vector_in.out_layer", ["time_text_embed.text_embedder.linear_2"], "same"),
    ("final_layer.adaLN_modulation.1", ["norm_out.linear"], "swap"),
    ("final_layer.linear", ["proj_out"], "same"),
]
_DOUBLE = [
    ("img_mod.lin", ["norm1.linear"], "same"),
    ("txt_mod.lin", ["norm1_context.linear"], "same"),
    ("img_attn.qkv", ["attn.to_q", "attn.to_k", "attn.to_v"], "cat"),
    ("txt_attn.qkv", ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"], "cat"),
    ("img_attn.norm.query_norm", ["attn.norm_q"], "norm"),
    ("img_attn.norm.key_norm", ["attn.norm_k"], "norm"),
    ("txt_attn.norm.query_norm", ["attn.norm_added_q"], "norm"),
    ("txt_attn.norm.key_norm", ["attn.norm_added_k"], "norm"),
    ("img_attn.proj", ["attn.to_out.0"], "same"),
    ("txt_attn.proj", ["attn.to_add_out"], "same"),
    ("img_mlp.0", ["ff.net.0.proj"], "same"),
    ("img_mlp.2", ["ff.net.2"], "same"),
    ("txt_mlp.0", ["ff_context.net.0.proj"], "same"),
    ("txt_mlp.2", ["ff_context.net.2"], "same"),
]
_SINGLE = [
    ("modulation.lin", ["norm.linear"], "same"),
    ("linear1", ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"], "cat"),
    ("linear2", ["proj_out"], "same"),
    ("norm.query_norm", ["attn.norm_q"], "norm"),
    ("norm.key_norm", ["attn.norm_k"], "norm"),
]


def _pairs(num_double: int, num_single: int):
    """(BFL module, [diffusers modules], how) for every module of a model of this depth."""
    yield from _GLOBAL
    for i in range(num_double):
        for bfl, diff, how in _DOUBLE:
            yield f"double_blocks.{i}.{bfl}", [f"transformer_blocks.{i}.{d}" for d in diff], how
    for i in range(num_single):
        for bfl, diff, how in _SINGLE:
            yield f"single_blocks.{i}.{bfl}", [f"single_transformer_blocks.{i}.{d}" for d in diff], how


def _param_names(how: str) -> list[tuple[str, str]]:
    """(BFL parameter, diffusers parameter) suffixes of one module."""
    return [("scale", "weight")] if how == "norm" else [("weight", "weight"), ("bias", "bias")]


def _depths(keys, double_prefix: str, single_prefix: str) -> tuple[int, int]:
    def count(prefix: str) -> int:
        found = {int(m.group(1)) for k in keys if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", k))}
        return max(found) + 1 if found else 0

    return count(double_prefix), count(single_prefix)


def _swap(t: Tensor) -> Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat((b, a), dim=0)


def is_diffusers_state(state: dict[str, Tensor]) -> bool:
    """True for a FluxTransformer2DModel state dict (diffusers names), False for BFL names."""
    return any(k.startswith(("transformer_blocks.", "x_embedder.", "single_transformer_blocks.")) for k in state)


def diffusers_to_bfl(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename (and fuse) a diffusers Flux transformer state dict into BFL names. Keys the table does
    not know are kept under their own names, so the loader reports them as unexpected."""
    out, used = {}, set()
    for bfl, diff, how in _pairs(*_depths(state, "transformer_blocks", "single_transformer_blocks")):
        for bfl_p, diff_p in _param_names(how):
            names = [f"{d}.{diff_p}" for d in diff]
            if not all(n in state for n in names):
                continue
            used.update(names)
            parts = [state[n] for n in names]
            if how == "cat":
                out[f"{bfl}.{bfl_p}"] = torch.cat(parts, dim=0)
            else:
                out[f"{bfl}.{bfl_p}"] = _swap(parts[0]) if how == "swap" else parts[0]
    out.update({k: v for k, v in state.items() if k not in used})
    return out


def diffusers_sources(keys) -> dict[str, tuple[list[str], str]]:
    """For the diffusers tensor names `keys`: each BFL parameter name -> (the diffusers names it is
    made of, how: same | cat | swap | norm), so one parameter can be read at a time."""
    keys = set(keys)
    out = {}
    for bfl, diff, how in _pairs(*_depths(keys, "transformer_blocks", "single_transformer_blocks")):
        for bfl_p, diff_p in _param_names(how):
            names = [f"{d}.{diff_p}" for d in diff]
            if all(n in keys for n in names):
                out[f"{bfl}.{bfl_p}"] = (names, how)
    used = {n for names, _ in out.values() for n in names}
    out.update({k: ([k], "same") for k in keys - used})
    return out


def fuse(parts: list[Tensor], how: str) -> Tensor:
    """One BFL tensor from its diffusers parts (see diffusers_sources)."""
    if how == "cat":
        return torch.cat(parts, dim=0)
    return _swap(parts[0]) if how == "swap" else parts[0]


def bfl_to_diffusers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse: BFL names into a FluxTransformer2DModel state dict. Fused tensors are split by
    the model's widths (q, k, v are each `hidden` rows; the MLP input takes the rest). Our own extras
    (cond_in) have no diffusers counterpart and are kept under their names."""
    hidden = state["img_in.weight"].shape[0]
    out, used = {}, set()
    for bfl, diff, how in _pairs(*_depths(state, "double_blocks", "single_blocks")):
        for bfl_p, diff_p in _param_names(how):
            name = f"{bfl}.{bfl_p}"
            if name not in state:
                continue
            used.add(name)
            t = state[name]
            if how == "cat":
                sizes = [hidden] * 3 + ([t.shape[0] - 3 * hidden] if len(diff) == 4 else [])
                for d, part in zip(diff, torch.split(t, sizes, dim=0)):
                    out[f"{d}.{diff_p}"] = part.contiguous()
            else:
                out[f"{diff[0]}.{diff_p}"] = _swap(t) if how == "swap" else t
    out.update({k: v for k, v in state.items() if k not in used})
    return out
