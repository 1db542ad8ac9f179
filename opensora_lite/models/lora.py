"""LoRA on the MMDiT, applied from outside (peft), and its adapters in and out.

`apply_lora` injects peft LoRA layers into the linears that `stage.lora.targets` names and freezes
everything else (cond_in stays trainable in an I2V stage unless `train_cond_in=false`); the MMDiT
itself knows nothing of adapters. Adapters are stored under BFL module names without peft's adapter
name (`double_blocks.0.img_attn.qkv.lora_A.weight`), with rank and alpha in the file's metadata.

Two conversions are pure functions over tensors: `merge_adapters` (base + alpha/rank * B @ A, back to
plain BFL names: the merged model every reader takes) and `adapters_to_diffusers` (diffusers/peft
LoRA names for FluxTransformer2DModel.load_lora_adapter). Where BFL fuses linears that diffusers keeps
apart (qkv -> to_q/to_k/to_v; a single block's linear1 -> to_q/to_k/to_v/proj_mlp), the fused delta
B @ A splits by rows of B, so each diffusers linear gets A unchanged and its rows of B; the final
layer's (shift, scale) halves swap as the weights do (flux_convert). The scale alpha/rank is folded
into B, so the exported adapters need no alpha.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor, nn

from opensora_lite.errors import CheckpointError
from opensora_lite.models.flux_convert import _depths, _pairs, _swap

_GROUPS = {
    "attention": [r"double_blocks\.\d+\.(img|txt)_attn\.(qkv|proj)", r"single_blocks\.\d+\.linear[12]"],
    "mlp": [r"double_blocks\.\d+\.(img|txt)_mlp\.[02]", r"single_blocks\.\d+\.linear[12]"],
    "modulation": [r"double_blocks\.\d+\.(img|txt)_mod\.lin", r"single_blocks\.\d+\.modulation\.lin"],
    # the text embedders: T5 tokens into the stream (txt_in), the pooled CLIP vector into the modulation
    "text_in": [r"txt_in", r"vector_in\.(in|out)_layer"],
}
GROUPS = tuple(_GROUPS)
ADAPTER = "default"  # peft's adapter name inside the model; stored names leave it out
NAMING = "bfl-flux-lora"


def target_pattern(targets: list[str]) -> str:
    """One regular expression (peft matches it against whole module names) for groups and/or patterns."""
    parts = []
    for target in targets:
        parts.extend(_GROUPS.get(target, [target]))
    return "|".join(f"(?:{p})" for p in dict.fromkeys(parts))


def lora_scale(rank: int, alpha: float) -> float:
    return alpha / rank


def apply_lora(
    model: nn.Module, rank: int, alpha: float, dropout: float, targets: list[str], train_cond_in: bool = True
) -> list[str]:
    """Inject LoRA adapters (in place) and freeze the base; returns the adapted module names."""
    from peft import LoraConfig, inject_adapter_in_model

    pattern = target_pattern(targets)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and re.fullmatch(pattern, n)]
    if not names:
        raise ValueError(f"stage.lora.targets {targets} match no linear of the model")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names, init_lora_weights=True)
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for name, p in model.named_parameters():
        p.requires_grad = ".lora_" in name or (train_cond_in and name.startswith("cond_in."))
    return names


def cast_frozen(model: nn.Module, dtype: torch.dtype) -> None:
    """Keep the frozen base weights in `dtype` (bf16 halves their memory); adapters stay fp32."""
    for p in model.parameters():
        if not p.requires_grad and p.is_floating_point():
            p.data = p.data.to(dtype)


def stored_name(name: str) -> str:
    """A model parameter's name as adapters are stored (peft's adapter name left out)."""
    return name.replace(f".lora_A.{ADAPTER}.", ".lora_A.").replace(f".lora_B.{ADAPTER}.", ".lora_B.")


def model_name(name: str) -> str:
    return name.replace(".lora_A.", f".lora_A.{ADAPTER}.").replace(".lora_B.", f".lora_B.{ADAPTER}.")


def is_adapter_state(state) -> bool:
    return any(".lora_A." in k for k in state)


def load_adapters(model: nn.Module, adapters: dict[str, Tensor], source: str) -> int:
    """Adapters (and the other trainable tensors, e.g. cond_in) from a checkpoint into a model that
    apply_lora prepared; every trainable parameter must be there."""
    wanted = {stored_name(n) for n, p in model.named_parameters() if p.requires_grad}
    missing = sorted(wanted - adapters.keys())
    if missing:
        raise CheckpointError(
            f"{source}: {len(missing)} adapter tensors are missing, e.g. {missing[:3]} "
            "(is stage.lora the one this checkpoint was trained with?)"
        )
    own = model.state_dict()
    for key in wanted:
        if tuple(adapters[key].shape) != tuple(own[model_name(key)].shape):
            raise CheckpointError(
                f"{source}: {key} is {tuple(adapters[key].shape)}, the model's {tuple(own[model_name(key)].shape)}"
            )
    model.load_state_dict({model_name(k): adapters[k] for k in wanted}, strict=False)
    return len(wanted)


def merge_adapters(state: dict[str, Tensor], scale: float) -> dict[str, Tensor]:
    """A LoRA model's full state (peft names) as plain BFL weights: W + scale * B @ A per adapted linear."""
    out = {}
    for key, value in state.items():
        if ".lora_A." in key or ".lora_B." in key:
            continue
        if ".base_layer." not in key:
            out[key] = value
            continue
        module, param = key.split(".base_layer.")
        merged = value.float()
        a_key = f"{module}.lora_A.{ADAPTER}.weight"
        if param == "weight" and a_key in state:
            b = state[f"{module}.lora_B.{ADAPTER}.weight"].float()
            merged = merged + scale * (b @ state[a_key].float())
        out[f"{module}.{param}"] = merged.to(value.dtype)
    return out


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


def read_adapters(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Stored adapters and their metadata (lora_rank, lora_alpha) from an adapters .safetensors file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no LoRA adapters at {path}")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("naming") != NAMING or not is_adapter_state(state):
        raise CheckpointError(f"{path}: not a LoRA adapters file of this framework (naming={meta.get('naming')})")
    return state, meta


def adapter_metadata(rank: int, alpha: float, targets: list[str]) -> dict[str, str]:
    return {
        "format": "pt",
        "naming": NAMING,
        "lora_rank": str(rank),
        "lora_alpha": str(alpha),
        "targets": ",".join(targets),
    }
