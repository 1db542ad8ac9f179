"""Export our Wan weights as a diffusers WanTransformer3DModel folder.

Our names are diffusers' names, so the folder is the state itself (in the dtype the caller gives),
as safetensors shards with their index where it is large, beside the config.json diffusers writes for
this architecture. `WanTransformer3DModel.from_pretrained(folder)` (or a Wan pipeline's transformer/)
loads it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from opensora_lite.checkpoint.files import DIFFUSERS_FILE, DIFFUSERS_INDEX, write_safetensors
from opensora_lite.errors import CheckpointError
from opensora_lite.models.wan.config import WanConfig

MAX_SHARD = "10GB"  # diffusers' own default shard size


def diffusers_config_json(cfg: WanConfig) -> str:
    """The config.json diffusers writes for the transformer of `cfg` (built on meta: nothing allocated)."""
    from diffusers import WanTransformer3DModel

    from opensora_lite.models.wan.model import diffusers_kwargs

    with torch.device("meta"):
        return WanTransformer3DModel(**diffusers_kwargs(cfg)).to_json_string()


def export_diffusers(
    state: dict[str, torch.Tensor], out: Path, cfg: WanConfig, max_shard: str = MAX_SHARD
) -> list[Path]:
    """Write `state` (diffusers' Wan names) as a transformer folder at `out`; returns the files written."""
    from huggingface_hub import split_torch_state_dict_into_shards

    if not any(k.startswith("blocks.") for k in state):
        raise CheckpointError(f"export: the state holds no Wan blocks ({', '.join(sorted(state)[:3])}, ...)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(diffusers_config_json(cfg))
    written = [out / "config.json"]
    split = split_torch_state_dict_into_shards(
        state, filename_pattern=DIFFUSERS_FILE.replace(".safetensors", "{suffix}.safetensors"), max_shard_size=max_shard
    )
    for name, keys in split.filename_to_tensors.items():
        write_safetensors({k: state[k] for k in keys}, out / name)
        written.append(out / name)
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (out / DIFFUSERS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        written.append(out / DIFFUSERS_INDEX)
    return written
