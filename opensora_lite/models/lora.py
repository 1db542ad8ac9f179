"""LoRA on any model family, applied from outside (peft), and its adapters in and out.

`apply_lora` injects peft LoRA layers into the linears that `stage.lora.targets` names (the family's
target groups, ModelSpec.lora_groups, or module-name patterns) and freezes everything else (inputs
the family trains beside the adapters, e.g. the MMDiT's cond_in, stay trainable unless
`train_cond_in=false`); the model itself knows nothing of adapters. Adapters are stored under the
model's own module names without peft's adapter name (`double_blocks.0.img_attn.qkv.lora_A.weight`),
with rank and alpha in the file's metadata. `merge_adapters` (base + alpha/rank * B @ A, back to plain
names: the merged model every reader takes) is a pure function over tensors; conversions to other
LoRA formats are the family's (models/flux/export.py: diffusers Flux LoRA names).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor, nn

from opensora_lite.errors import CheckpointError

ADAPTER = "default"  # peft's adapter name inside the model; stored names leave it out
NAMING = "lora"  # adapters files' metadata "naming" ends with this (the family's names: bfl-flux-lora)


def target_pattern(targets: list[str], groups: dict[str, tuple[str, ...]]) -> str:
    """One regular expression (peft matches it against whole module names) for groups and/or patterns."""
    parts = []
    for target in targets:
        parts.extend(groups.get(target, [target]))
    return "|".join(f"(?:{p})" for p in dict.fromkeys(parts))


def lora_scale(rank: int, alpha: float) -> float:
    return alpha / rank


def apply_lora(
    model: nn.Module,
    rank: int,
    alpha: float,
    dropout: float,
    targets: list[str],
    groups: dict[str, tuple[str, ...]],
    also_train: tuple[str, ...] = (),
) -> list[str]:
    """Inject LoRA adapters (in place) into the linears `targets` name (groups of `groups`, or patterns)
    and freeze the rest but the parameters under `also_train` prefixes; returns the adapted names."""
    from peft import LoraConfig, inject_adapter_in_model

    pattern = target_pattern(targets, groups)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and re.fullmatch(pattern, n)]
    if not names:
        raise ValueError(f"stage.lora.targets {targets} match no linear of the model")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names, init_lora_weights=True)
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for name, p in model.named_parameters():
        p.requires_grad = ".lora_" in name or (bool(also_train) and name.startswith(also_train))
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
    """Adapters (and the other trainable tensors, e.g. the MMDiT's cond_in) from a checkpoint into a model that
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


def read_adapters(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Stored adapters and their metadata (lora_rank, lora_alpha) from an adapters .safetensors file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no LoRA adapters at {path}")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    if not str(meta.get("naming", "")).endswith(NAMING) or not is_adapter_state(state):
        raise CheckpointError(f"{path}: not a LoRA adapters file of this framework (naming={meta.get('naming')})")
    return state, meta


def adapter_metadata(rank: int, alpha: float, targets: list[str], naming: str = "bfl-flux-lora") -> dict[str, str]:
    """`naming`: the family's (ModelSpec.lora_naming), ending in "lora"."""
    return {
        "format": "pt",
        "naming": naming,
        "lora_rank": str(rank),
        "lora_alpha": str(alpha),
        "targets": ",".join(targets),
    }
