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

import contextlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from opensora_lite.errors import CheckpointError
from opensora_lite.models.flux_convert import diffusers_to_bfl, is_diffusers_state
from opensora_lite.models.opensora_convert import is_opensora_state, opensora_to_bfl

DIFFUSERS_INDEX = "diffusion_pytorch_model.safetensors.index.json"
DIFFUSERS_FILE = "diffusion_pytorch_model.safetensors"
DCP_METADATA = ".metadata"
NEW_IN_VIDEO = ("cond_in.",)
OPTIONAL = ("guidance_in.",)
MMDIT_PARTS = ("img_in.", "double_blocks.", "single_blocks.")  # what any MMDiT checkpoint holds


_WRAPPER_PARTS = ("_orig_mod.", "_checkpoint_wrapped_module.", "_fsdp_wrapped_module.")


def clean_key(key: str) -> str:
    """A parameter name without the prefixes compile / checkpoint / FSDP wrappers insert."""
    for part in _WRAPPER_PARTS:
        key = key.replace(part, "")
    return key


@dataclass
class LoadReport:
    source: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)  # in the model, not in the checkpoint
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, not in the model

    def summary(self) -> str:
        def short(keys: list[str]) -> str:
            prefixes = sorted({k.split(".")[0] for k in keys})
            return f"{len(keys)} ({', '.join(prefixes)})" if keys else "0"

        return (
            f"loaded {self.loaded} tensors from {self.source}; "
            f"missing {short(self.missing)}; unexpected {short(self.unexpected)}"
        )


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> LoadReport:
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if mismatched:
        k = mismatched[0]
        raise CheckpointError(
            f"{source}: {len(mismatched)} tensors do not fit the model, e.g. {k} {tuple(state[k].shape)} vs "
            f"{tuple(own[k].shape)} (is the model config the one this checkpoint was trained with?)"
        )
    report = LoadReport(source)
    report.missing = [k for k in own if k not in state]
    report.unexpected = [k for k in state if k not in own]
    fatal = [k for k in report.missing if not k.startswith(NEW_IN_VIDEO + OPTIONAL)]
    if fatal:
        raise CheckpointError(f"{source}: {len(fatal)} model tensors are missing from the checkpoint, e.g. {fatal[:3]}")
    usable = {k: v for k, v in state.items() if k in own}
    model.load_state_dict(usable, strict=False)
    report.loaded = len(usable)
    return report


def diffusers_folder(path: Path) -> Path | None:
    """The FluxTransformer2DModel folder at path (or at path/transformer for a pipeline), if any."""
    for folder in (path, path / "transformer"):
        if (folder / DIFFUSERS_INDEX).is_file() or (folder / DIFFUSERS_FILE).is_file():
            return folder
    return None


def write_safetensors(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """save_file, with the permissions the user's umask gives (safetensors creates files 0600, which
    teammates on a shared cluster filesystem cannot read)."""
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata or {"format": "pt"})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextlib.contextmanager
def single_process_dcp():
    """Silence DCP's notice that it runs without a process group (on purpose, in that case)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def is_dcp_folder(path: Path) -> bool:
    """A torch.distributed.checkpoint folder (what sharded engines write: one file per rank + .metadata)."""
    return (path / DCP_METADATA).is_file()


def read_dcp_folder(path: Path) -> dict[str, torch.Tensor]:
    """Consolidate a sharded DCP checkpoint of model weights into full tensors on this process.

    Works from any world size to one process, with no process group: the metadata gives each tensor's
    full shape and dtype, and DCP reads every rank's pieces into it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = dcp.FileSystemReader(str(path))
    meta = reader.read_metadata()
    needed: dict[str, int] = {}  # each rank's file and the bytes the metadata says it holds
    for info in (meta.storage_data or {}).values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        if not (path / name).is_file():
            raise CheckpointError(f"{name} is missing (the checkpoint was written by {len(needed)} ranks)")
        if (path / name).stat().st_size < size:
            raise CheckpointError(f"{name} is truncated ({(path / name).stat().st_size} of {size} bytes)")
    state = {
        name: torch.empty(m.size, dtype=m.properties.dtype)
        for name, m in meta.state_dict_metadata.items()
        if isinstance(m, TensorStorageMetadata)
    }
    planner = dcp.DefaultLoadPlanner(allow_partial_load=True)
    with single_process_dcp():
        dcp.load(state, storage_reader=reader, planner=planner, no_dist=True)  # each caller reads it all
    return {clean_key(k): v for k, v in state.items()}


def read_flux_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """Weights in BFL names from a safetensors file (BFL, diffusers or Open-Sora 2.0 names), a diffusers
    folder or a sharded DCP folder, and the format found ("bfl", "diffusers", "opensora" or "dcp")."""
    path = Path(path)
    if path.is_dir() and is_dcp_folder(path):
        try:
            return read_dcp_folder(path), "dcp"
        except Exception as e:  # a missing or truncated rank file, unreadable metadata
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"cannot read the sharded checkpoint at {path}: {first}") from None
    folder = diffusers_folder(path) if path.is_dir() else None
    if path.is_dir() and folder is None:
        raise CheckpointError(f"{path}: a folder without {DIFFUSERS_INDEX}, {DIFFUSERS_FILE} or {DCP_METADATA}")
    try:
        if folder is None:
            state = load_file(str(path))
        elif (folder / DIFFUSERS_INDEX).is_file():
            shards = sorted(set(json.loads((folder / DIFFUSERS_INDEX).read_text())["weight_map"].values()))
            state = {}
            for shard in shards:
                state.update(load_file(str(folder / shard)))
        else:
            state = load_file(str(folder / DIFFUSERS_FILE))
    except Exception as e:  # a missing shard, a truncated file (SafetensorError), a bad index
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read Flux weights at {path}: {first}") from None
    if folder is not None or is_diffusers_state(state):
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

        from opensora_lite.models.flux_convert import diffusers_sources

        self.path = Path(path)
        folder = diffusers_folder(self.path) if self.path.is_dir() else None
        if self.path.is_dir() and folder is None:
            raise CheckpointError(f"{path}: not a Flux weights file or diffusers folder")
        if folder is None:
            files = [self.path]
        elif (folder / DIFFUSERS_INDEX).is_file():
            index = json.loads((folder / DIFFUSERS_INDEX).read_text())["weight_map"]
            files = [folder / f for f in sorted(set(index.values()))]
        else:
            files = [folder / DIFFUSERS_FILE]
        try:
            self._files = [safe_open(str(f), framework="pt") for f in files]
        except Exception as e:
            raise CheckpointError(f"cannot open Flux weights at {path}: {e}") from None
        self._where = {k: f for f in self._files for k in f.keys()}
        if folder is not None or is_diffusers_state(dict.fromkeys(self._where)):
            self.format, self._sources = "diffusers", diffusers_sources(self._where)
        elif is_opensora_state(dict.fromkeys(self._where)):
            from opensora_lite.models.opensora_convert import opensora_sources, to_bfl_rows

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
            from opensora_lite.models.opensora_convert import assemble

            full = assemble([self._where[n].get_tensor(n) for n in names], self._rope[key], self._rows)
        else:
            from opensora_lite.models.flux_convert import fuse

            full = fuse([self._where[n].get_tensor(n) for n in names], how)
        return full[rows] if rows is not None else full
