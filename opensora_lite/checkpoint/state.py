"""The trainer state of a checkpoint (step, scheduler, loader position, noise generators, a task's own
state): JSON with its tensors in a safetensors file beside it, so reading a checkpoint copied from
someone else's run runs no pickle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from opensora_lite.errors import CheckpointError
from opensora_lite.layout import STATE_JSON, STATE_TENSORS


def write_trainer_state(folder: Path, state: dict[str, Any]) -> None:
    """`state` as JSON; each tensor in it (generator states) replaced by {"tensor": key} into a safetensors
    file. Only JSON types and tensors are allowed, so what is written is what is read back."""
    tensors: dict[str, torch.Tensor] = {}

    def plain(value: Any, where: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensors[where] = value.detach().cpu().contiguous()
            return {"tensor": where}
        if isinstance(value, dict):
            return {str(k): plain(v, f"{where}.{k}") for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v, f"{where}.{i}") for i, v in enumerate(value)]
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"trainer state {where}: {type(value).__name__} is not JSON or a tensor")

    doc = plain(state, "state")
    save_file(tensors, str(folder / STATE_TENSORS))
    (folder / STATE_JSON).write_text(json.dumps(doc, indent=1))


def read_trainer_state(folder: Path) -> dict[str, Any]:
    """The trainer state of a checkpoint folder."""
    if not (folder / STATE_JSON).is_file():
        raise CheckpointError(f"{folder} has no trainer state ({STATE_JSON})")
    tensors = load_file(str(folder / STATE_TENSORS)) if (folder / STATE_TENSORS).is_file() else {}

    def restore(value: Any) -> Any:
        if isinstance(value, dict):
            if value.keys() == {"tensor"} and isinstance(value["tensor"], str):
                if value["tensor"] not in tensors:
                    raise CheckpointError(f"{folder / STATE_TENSORS} lacks {value['tensor']}")
                return tensors[value["tensor"]]
            return {k: restore(v) for k, v in value.items()}
        if isinstance(value, list):
            return [restore(v) for v in value]
        return value

    try:
        return restore(json.loads((folder / STATE_JSON).read_text()))
    except ValueError as exc:
        raise CheckpointError(f"{folder / STATE_JSON} is not readable JSON ({exc})") from None
