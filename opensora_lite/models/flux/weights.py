"""Load Flux weights (a FLUX.1 checkpoint, or a previous stage) into the MMDiT, with a report.

Every format is read and told apart automatically by its tensor names: the BFL single file (flux1-dev.safetensors,
the names our model uses) and diffusers' layout (a FluxTransformer2DModel folder with sharded
safetensors and an index, a pipeline folder holding one under transformer/, or a single file with
diffusers names), which is converted by `flux_convert`, and Open-Sora 2.0's layout (Open_Sora_v2.safetensors: split
q/k/v, rotate-half RoPE rows), converted by `opensora_convert`. Sharded engines' checkpoints (a
torch.distributed.checkpoint folder written by every rank) are consolidated on read.

Keys the video model adds on purpose (`cond_in`, zero-initialised) may be missing, and `guidance_in`
may be absent on either side (Open-Sora's video model drops Flux-dev's guidance distillation). Any
other missing key or a shape mismatch is an error: it means the checkpoint does not fit the config.
bf16 checkpoints load into the model's fp32 parameters.
"""

from __future__ import annotations

from pathlib import Path

import torch

from opensora_lite.checkpoint.files import (
    diffusers_folder,
    read_tensors,
)
from opensora_lite.errors import CheckpointError
from opensora_lite.models.flux.convert import diffusers_to_bfl, is_diffusers_state
from opensora_lite.models.flux.opensora_convert import is_opensora_state, opensora_to_bfl

NEW_IN_VIDEO = ("cond_in.",)
OPTIONAL = ("guidance_in.",)
MMDIT_PARTS = ("img_in.", "double_blocks.", "single_blocks.")  # what any MMDiT checkpoint holds


def read_flux_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """Weights in BFL names from a safetensors file (BFL, diffusers or Open-Sora 2.0 names), a diffusers
    folder or a sharded DCP folder, and the format found ("bfl", "diffusers", "opensora" or "dcp")."""
    path = Path(path)
    state, kind = read_tensors(path, "Flux weights")
    if kind == "dcp":
        return state, "dcp"
    if kind == "diffusers" or is_diffusers_state(state):
        return diffusers_to_bfl(state), "diffusers"
    if is_opensora_state(state):
        return opensora_to_bfl(state, str(path)), "opensora"
    if not any(k.startswith(MMDIT_PARTS) for k in state):
        some = ", ".join(sorted(state)[:3]) or "no tensors"
        raise CheckpointError(
            f"{path}: not an MMDiT checkpoint (BFL Flux, diffusers or Open-Sora 2.0 names); it holds {some}, ..."
        )
    return state, "bfl"


class LazyFluxWeights:
    """Flux weights opened, not read: a BFL safetensors file or a diffusers folder, memory-mapped, so
    that a rank holding a shard reads its rows of each parameter and nothing else (a BFL tensor by a
    slice of rows; a fused diffusers one, e.g. `qkv`, or an Open-Sora 2.0 one, from its parts one
    parameter at a time: each rank holds at most one whole parameter beside its shards)."""

    def __init__(self, path: str | Path):
        from safetensors import safe_open

        from opensora_lite.checkpoint.files import folder_files
        from opensora_lite.models.flux.convert import diffusers_sources

        self.path = Path(path)
        folder = diffusers_folder(self.path) if self.path.is_dir() else None
        if self.path.is_dir() and folder is None:
            raise CheckpointError(f"{path}: not a Flux weights file or diffusers folder")
        files = [self.path] if folder is None else folder_files(folder)
        try:
            self._files = [safe_open(str(f), framework="pt") for f in files]
        except Exception as e:
            raise CheckpointError(f"cannot open Flux weights at {path}: {e}") from None
        self._where = {k: f for f in self._files for k in f.keys()}
        if folder is not None or is_diffusers_state(dict.fromkeys(self._where)):
            self.format, self._sources = "diffusers", diffusers_sources(self._where)
        elif is_opensora_state(dict.fromkeys(self._where)):
            from opensora_lite.models.flux.opensora_convert import opensora_sources, to_bfl_rows

            self.format = "opensora"
            sources = opensora_sources(list(self._where), str(self.path))
            self._sources = {k: (names, "rope" if any(rope) else "same") for k, (names, rope) in sources.items()}
            self._rope = {k: rope for k, (_, rope) in sources.items()}
            scale = next((k for k in self._where if k.endswith("norm.query_norm.scale")), None)
            if scale is None:
                raise CheckpointError(f"{path}: no q/k norm scale (norm.query_norm.scale): not an MMDiT checkpoint")
            self._rows = to_bfl_rows(self._where[scale].get_slice(scale).get_shape()[0])
        else:
            self.format, self._sources = "bfl", {k: ([k], "same") for k in self._where}

    def keys(self) -> list[str]:
        return list(self._sources)

    def shape(self, key: str) -> tuple[int, ...]:
        names, how = self._sources[key]
        shapes = [self._where[n].get_slice(n).get_shape() for n in names]
        return (sum(s[0] for s in shapes), *shapes[0][1:]) if how in ("cat", "rope") else tuple(shapes[0])

    def read(self, key: str, rows: slice | None = None) -> torch.Tensor:
        """Parameter `key` (BFL name), or only its rows `rows` (dim 0)."""
        names, how = self._sources[key]
        if how in ("same", "norm"):
            view = self._where[names[0]].get_slice(names[0])
            return view[rows] if rows is not None else view[:]
        elif how == "cat" and rows is not None:  # the rows asked for, from the parts they lie in
            start, stop = rows.indices(self.shape(key)[0])[:2]
            pieces, offset = [], 0
            for n in names:
                view = self._where[n].get_slice(n)
                size = view.get_shape()[0]
                a, b = max(start - offset, 0), min(stop - offset, size)
                if a < b:
                    pieces.append(view[a:b])
                offset += size
            return torch.cat(pieces) if pieces else torch.empty(0, *self.shape(key)[1:])
        elif how == "rope":  # Open-Sora's split q/k/v: this parameter's parts, rows re-ordered, fused
            from opensora_lite.models.flux.opensora_convert import assemble

            full = assemble([self._where[n].get_tensor(n) for n in names], self._rope[key], self._rows)
        else:
            from opensora_lite.models.flux.convert import fuse

            full = fuse([self._where[n].get_tensor(n) for n in names], how)
        return full[rows] if rows is not None else full
