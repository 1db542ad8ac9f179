"""Weight files: safetensors written with the user's permissions, read with one clear error, DCP folders
(one file per rank + .metadata) consolidated on one process, and diffusers-style folders (an index of
sharded safetensors, or one file). Names are canonical: wrappers' prefixes removed (`clean_key`)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from opensora_lite.errors import CheckpointError

DCP_METADATA = ".metadata"
DIFFUSERS_INDEX = "diffusion_pytorch_model.safetensors.index.json"
DIFFUSERS_FILE = "diffusion_pytorch_model.safetensors"
_WRAPPER_PARTS = ("_orig_mod.", "_checkpoint_wrapped_module.", "_fsdp_wrapped_module.")


def clean_key(key: str) -> str:
    """A parameter name without the prefixes compile / checkpoint / FSDP wrappers insert."""
    for part in _WRAPPER_PARTS:
        key = key.replace(part, "")
    return key


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def write_safetensors(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """save_file, with the permissions the user's umask gives (safetensors creates files 0600, which
    teammates on a shared cluster filesystem cannot read)."""
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata or {"format": "pt"})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors (one clear error when missing or unreadable)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        return load_file(str(path))
    except Exception as exc:  # a truncated file (SafetensorError), not safetensors at all
        raise CheckpointError(f"cannot read {path}: {first_line(exc)}") from None


@contextlib.contextmanager
def single_process_dcp():
    """Silence DCP's notice that it runs without a process group (on purpose, in that case)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def is_dcp_folder(path: Path) -> bool:
    """A torch.distributed.checkpoint folder (what sharded engines write: one file per rank + .metadata)."""
    return (Path(path) / DCP_METADATA).is_file()


def read_dcp_folder(path: Path) -> dict[str, torch.Tensor]:
    """Consolidate a sharded DCP checkpoint of model weights into full tensors on this process.

    Works from any world size to one process, with no process group: the metadata gives each tensor's
    full shape and dtype, and DCP reads every rank's pieces into it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    path = Path(path)
    try:
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
    except Exception as exc:  # a missing or truncated rank file, unreadable metadata
        raise CheckpointError(f"cannot read the sharded checkpoint at {path}: {first_line(exc)}") from None
    return {clean_key(k): v for k, v in state.items()}


def dcp_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's full shape in a DCP folder, from its metadata alone."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = dcp.FileSystemReader(str(path)).read_metadata()
    return {
        clean_key(k): tuple(m.size) for k, m in meta.state_dict_metadata.items() if isinstance(m, TensorStorageMetadata)
    }


def diffusers_folder(path: Path) -> Path | None:
    """The diffusers model folder at path (or at path/transformer for a pipeline), if any."""
    for folder in (path, path / "transformer"):
        if (folder / DIFFUSERS_INDEX).is_file() or (folder / DIFFUSERS_FILE).is_file():
            return folder
    return None


def folder_files(folder: Path) -> list[Path]:
    """The safetensors files of a diffusers model folder (its index's shards, or its one file)."""
    if (folder / DIFFUSERS_INDEX).is_file():
        index = json.loads((folder / DIFFUSERS_INDEX).read_text())["weight_map"]
        return [folder / f for f in sorted(set(index.values()))]
    return [folder / DIFFUSERS_FILE]


def read_tensors(path: Path, what: str = "weights") -> tuple[dict[str, torch.Tensor], str]:
    """Every tensor of a weights file, a diffusers model folder or a DCP folder, and which it was
    ("file", "diffusers" or "dcp"); one clear error for anything else or a damaged file (`what`: how
    the error names them, e.g. "Flux weights")."""
    path = Path(path)
    if path.is_dir() and is_dcp_folder(path):
        return read_dcp_folder(path), "dcp"
    folder = diffusers_folder(path) if path.is_dir() else None
    if path.is_dir() and folder is None:
        raise CheckpointError(f"{path}: a folder without {DIFFUSERS_INDEX}, {DIFFUSERS_FILE} or {DCP_METADATA}")
    if not path.exists():
        raise CheckpointError(f"no {what} at {path}")
    try:
        state: dict[str, torch.Tensor] = {}
        for file in [path] if folder is None else folder_files(folder):
            state.update(load_file(str(file)))
    except Exception as exc:  # a missing shard, a truncated file (SafetensorError), a bad index
        raise CheckpointError(f"cannot read {what} at {path}: {first_line(exc)}") from None
    return state, "file" if folder is None else "diffusers"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(tmp: Path, final: Path) -> None:
    """Rename a fully written folder into place (replacing an older one of the same name): a reader sees
    the old folder or the new one, never a part."""
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        else:
            fsync_dir(f)
    if final.exists():
        old = final.with_name(f".old-{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    fsync_dir(final.parent)
