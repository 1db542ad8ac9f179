"""Export our weights as FLUX.1 checkpoints: the BFL single file and a diffusers transformer folder.

Our parameters already carry BFL names, so the single file is our state dict (minus parts Flux has
no place for) in the checkpoint dtype. The diffusers folder is the same tensors renamed by
`flux_convert.bfl_to_diffusers`, written as safetensors shards with an index and the `config.json`
FluxTransformer2DModel expects. Neither needs diffusers at export time, nor instantiates a model, so
exporting an 11B checkpoint takes the memory of its tensors only.

The architecture is read from the tensors (widths, depths, head size from the QK-norm scales); only
the RoPE split (`axes_dim`) is not visible in weights and comes from the run's config.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from opensora_lite.checkpoint.files import DIFFUSERS_INDEX, write_safetensors
from opensora_lite.dtypes import DTYPES
from opensora_lite.errors import CheckpointError
from opensora_lite.models.flux.convert import _depths, _pairs, _swap, bfl_to_diffusers

# Parameters of our video model that FLUX.1 has no slot for (the I2V condition input).
NOT_IN_FLUX = ("cond_in.",)


@dataclass
class FluxArchitecture:
    """What a FLUX.1-format transformer is, as read from its BFL-named tensors."""

    in_channels: int
    hidden_size: int
    num_heads: int
    depth: int
    depth_single_blocks: int
    context_in_dim: int
    vec_in_dim: int
    guidance_embed: bool
    mlp_ratio: float
    axes_dim: list[int] = field(default_factory=list)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def diffusers_config(self) -> dict:
        """config.json of the equivalent diffusers FluxTransformer2DModel (patch_size 1: tokens come packed)."""
        return {
            "_class_name": "FluxTransformer2DModel",
            "patch_size": 1,
            "in_channels": self.in_channels,
            "out_channels": None,
            "num_layers": self.depth,
            "num_single_layers": self.depth_single_blocks,
            "attention_head_dim": self.head_dim,
            "num_attention_heads": self.num_heads,
            "joint_attention_dim": self.context_in_dim,
            "pooled_projection_dim": self.vec_in_dim,
            "guidance_embeds": self.guidance_embed,
            "axes_dims_rope": list(self.axes_dim),
        }


def _count(state: dict[str, torch.Tensor], prefix: str) -> int:
    return len({k.split(".")[1] for k in state if k.startswith(prefix)})


def read_architecture(state: dict[str, torch.Tensor], axes_dim: list[int] | None) -> FluxArchitecture:
    """The architecture of BFL-named weights; axes_dim from the caller (None: Flux's [16, 56, 56] if the
    head size is 128)."""
    try:
        hidden, in_channels = state["img_in.weight"].shape
        depth, single = _count(state, "double_blocks."), _count(state, "single_blocks.")
        norm = "double_blocks.0.img_attn.norm.query_norm.scale" if depth else "single_blocks.0.norm.query_norm.scale"
        head_dim = state[norm].shape[0]
        mlp = (
            state["double_blocks.0.img_mlp.0.weight"].shape[0]
            if depth
            else state["single_blocks.0.linear2.weight"].shape[1] - hidden
        )
        arch = FluxArchitecture(
            in_channels=in_channels,
            hidden_size=hidden,
            num_heads=hidden // head_dim,
            depth=depth,
            depth_single_blocks=single,
            context_in_dim=state["txt_in.weight"].shape[1],
            vec_in_dim=state["vector_in.in_layer.weight"].shape[1],
            guidance_embed="guidance_in.in_layer.weight" in state,
            mlp_ratio=mlp / hidden,
        )
    except KeyError as exc:
        raise CheckpointError(f"these weights are not a Flux MMDiT in BFL naming (no {exc.args[0]})") from None
    if axes_dim is None:
        if head_dim != 128:
            raise CheckpointError(f"head size {head_dim} is not Flux's 128: give the RoPE split (axes_dim)")
        axes_dim = [16, 56, 56]
    if sum(axes_dim) != head_dim:
        raise CheckpointError(f"axes_dim {list(axes_dim)} does not sum to the head size {head_dim}")
    arch.axes_dim = list(axes_dim)
    return arch


def flux_tensors(state: dict[str, torch.Tensor], dtype: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensors a FLUX.1 checkpoint holds, cast to dtype, and the names left out."""
    if dtype not in DTYPES:
        raise CheckpointError(f"unknown export dtype {dtype!r}; choose from {sorted(DTYPES)}")
    dropped = sorted(k for k in state if k.startswith(NOT_IN_FLUX))
    kept = {k: v.detach().to("cpu", DTYPES[dtype]).contiguous() for k, v in state.items() if k not in dropped}
    return kept, dropped


def write_bfl_file(state: dict[str, torch.Tensor], path: Path, arch: FluxArchitecture) -> Path:
    """The BFL single file (flux1-dev.safetensors layout), loadable by diffusers' from_single_file and ComfyUI."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", "naming": "bfl-flux", "architecture": json.dumps(arch.diffusers_config())}
    tmp = path.with_name(f".tmp-{path.name}")
    write_safetensors(state, tmp, meta)
    tmp.replace(path)
    return path


def write_diffusers_folder(
    state: dict[str, torch.Tensor], folder: Path, arch: FluxArchitecture, max_shard_bytes: int = 5 * 2**30
) -> Path:
    """A diffusers FluxTransformer2DModel folder: config.json, safetensors shards and their index."""
    tensors = bfl_to_diffusers(state)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].numel() * tensors[name].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    tmp = folder.with_name(f".tmp-{folder.name}")  # written whole, then renamed into place
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        fname = (
            "diffusion_pytorch_model.safetensors"
            if len(shards) == 1
            else f"diffusion_pytorch_model-{i:05d}-of-{len(shards):05d}.safetensors"
        )
        write_safetensors(shard, tmp / fname)
        weight_map.update(dict.fromkeys(shard, fname))
    if len(shards) > 1:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (tmp / DIFFUSERS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True))
    (tmp / "config.json").write_text(json.dumps(arch.diffusers_config(), indent=2))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def adapters_to_diffusers(
    adapters: dict[str, Tensor], scale: float, hidden: int, prefix: str = "transformer"
) -> tuple[dict[str, Tensor], list[str]]:
    """Stored adapters (BFL names) -> diffusers/peft LoRA names (`transformer.<module>.lora_A.weight`),
    scale folded into B; returns them and the tensors left out (no LoRA in diffusers: cond_in)."""
    depth = _depths(adapters, "double_blocks", "single_blocks")
    table = {bfl: (diff, how) for bfl, diff, how in _pairs(*depth)}
    out, left = {}, []
    for key in adapters:
        if ".lora_A." not in key:
            if ".lora_B." not in key:
                left.append(key)
            continue
        module = key.split(".lora_A.")[0]
        if module not in table:
            raise CheckpointError(f"adapter on {module}: no diffusers Flux counterpart")
        names, how = table[module]
        a, b = adapters[key], adapters[f"{module}.lora_B.weight"].float() * scale
        if how == "cat":
            sizes = [hidden] * 3 + ([b.shape[0] - 3 * hidden] if len(names) == 4 else [])
            parts = torch.split(b, sizes, dim=0)
        else:
            parts = [_swap(b) if how == "swap" else b]
        for name, part in zip(names, parts):
            out[f"{prefix}.{name}.lora_A.weight"] = a.clone()  # one tensor per linear, not shared
            out[f"{prefix}.{name}.lora_B.weight"] = part.to(a.dtype).contiguous()
    return out, left


def adapter_hidden_size(adapters: dict[str, Tensor]) -> int:
    """The model width, from an adapter whose linear takes the hidden state as input."""
    for key, value in adapters.items():
        if re.search(r"\.(qkv|proj|linear1|mlp\.0|lin)\.lora_A\.weight$", key):
            return value.shape[1]
    raise CheckpointError("the adapters hold no linear of the hidden width (qkv, proj, linear1, mlp.0, lin)")
