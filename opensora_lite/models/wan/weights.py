"""Wan transformer weights in, in diffusers' names (the family's canonical names).

Reads a diffusers WanTransformer3DModel folder (config.json + diffusion_pytorch_model.safetensors, or
shards with their index; a pipeline folder's transformer/), a single .safetensors file, or a sharded
DCP folder (what our sharded engines write). The original Wan release (Wan-AI/Wan2.1-T2V-*: `self_attn.q`,
`head.head`, ...; also behind ComfyUI's `model.diffusion_model.` prefix) is renamed to diffusers' names
by diffusers' own converter. Image-to-video checkpoints (image cross-attention) and Wan 2.2's two-expert
pipelines are refused with the line that says why.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from opensora_lite.checkpoint.files import DIFFUSERS_FILE, DIFFUSERS_INDEX, is_dcp_folder, read_dcp_folder
from opensora_lite.errors import CheckpointError

_DIFFUSERS_MARK = ("condition_embedder.", "proj_out.")  # names only diffusers' Wan has
_ORIGINAL_MARK = ("head.head.", "text_embedding.", "time_projection.")  # names only the original release has
_I2V_MARK = (".add_k_proj.", "image_embedder.", ".k_img.", "img_emb.")


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def transformer_folder(path: Path) -> Path | None:
    """The folder holding the transformer's safetensors: `path` itself or a pipeline's transformer/."""
    for folder in (path, path / "transformer"):
        if (folder / DIFFUSERS_INDEX).is_file() or (folder / DIFFUSERS_FILE).is_file():
            return folder
    return None


def safetensors_files(path: Path) -> list[Path]:
    """The safetensors files of a Wan transformer at `path`: the file itself, or a folder's shards."""
    if not path.is_dir():
        return [path]
    if (path / "transformer_2").is_dir() and transformer_folder(path) == path / "transformer":
        raise CheckpointError(
            f"{path}: a Wan 2.2 pipeline with two experts (transformer/ for high noise, transformer_2/ for "
            "low noise); one model is trained at a time: point to one of the two folders"
        )
    folder = transformer_folder(path)
    if folder is None:
        raise CheckpointError(f"{path}: a folder without {DIFFUSERS_INDEX}, {DIFFUSERS_FILE} or a DCP .metadata")
    if (folder / DIFFUSERS_INDEX).is_file():
        try:
            index = json.loads((folder / DIFFUSERS_INDEX).read_text())["weight_map"]
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{folder / DIFFUSERS_INDEX}: not a safetensors index ({_first_line(e)})") from None
        return [folder / name for name in sorted(set(index.values()))]
    return [folder / DIFFUSERS_FILE]


def _strip(key: str) -> str:
    return key.removeprefix("model.diffusion_model.")


def to_diffusers_names(state: dict[str, torch.Tensor], source: str) -> tuple[dict[str, torch.Tensor], str]:
    """A Wan state in diffusers' names, and which names it had ("diffusers" or "original")."""
    keys = [_strip(k) for k in state]
    if any(mark in k for k in keys for mark in _I2V_MARK):
        raise CheckpointError(
            f"{source}: an image-to-video Wan checkpoint (image cross-attention); family wan trains text-to-video only"
        )
    if any(k.startswith(_DIFFUSERS_MARK) for k in keys):
        return {_strip(k): v for k, v in state.items()}, "diffusers"
    if any(k.startswith(_ORIGINAL_MARK) for k in keys):
        from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

        return convert_wan_transformer_to_diffusers(dict(state)), "original"
    some = ", ".join(sorted(state)[:3]) or "no tensors"
    raise CheckpointError(f"{source}: not a Wan transformer (diffusers or original Wan names); it holds {some}, ...")


def read_wan_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """Weights in diffusers' Wan names from any format the family reads, and the format's name:
    "dcp" (our sharded checkpoints), "diffusers" (a folder, or a file of diffusers names) or "original"
    (the original Wan release's names, converted)."""
    path = Path(path)
    if path.is_dir() and is_dcp_folder(path):
        try:
            return read_dcp_folder(path), "dcp"
        except CheckpointError:
            raise
        except Exception as e:  # unreadable metadata, a rank file DCP cannot parse
            raise CheckpointError(f"cannot read the sharded checkpoint at {path}: {_first_line(e)}") from None
    if not path.exists():
        raise CheckpointError(f"{path} does not exist (a Wan transformer folder, .safetensors file or DCP folder)")
    try:
        state = {}
        for file in safetensors_files(path):
            state.update(load_file(str(file)))
    except CheckpointError:
        raise
    except Exception as e:  # a missing shard, a truncated file (SafetensorError), a bad index
        raise CheckpointError(f"cannot read Wan weights at {path}: {_first_line(e)}") from None
    return to_diffusers_names(state, str(path))


class LazyWanWeights:
    """Wan weights opened, not read: the safetensors files memory-mapped, so that a rank holding a shard
    of a parameter reads its rows and nothing else (parallel.meta_init). Keys are diffusers' names;
    the original release's names map one to one (a rename, no fusing)."""

    def __init__(self, path: str | Path):
        from safetensors import safe_open

        self.path = Path(path)
        if not self.path.exists():
            raise CheckpointError(f"{path} does not exist (a Wan transformer folder or .safetensors file)")
        try:
            files = [safe_open(str(f), framework="pt") for f in safetensors_files(self.path)]
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"cannot open Wan weights at {path}: {_first_line(e)}") from None
        self._where = {k: f for f in files for k in f.keys()}
        # diffusers name -> the name in the files (renaming a state of names gives the map)
        self._source, self.format = to_diffusers_names(dict(zip(self._where, self._where)), str(path))

    def keys(self) -> list[str]:
        return list(self._source)

    def shape(self, key: str) -> tuple[int, ...]:
        name = self._source[key]
        return tuple(self._where[name].get_slice(name).get_shape())

    def read(self, key: str, rows: slice | None = None) -> torch.Tensor:
        """Parameter `key`, or only its rows `rows` (dim 0)."""
        name = self._source[key]
        view = self._where[name].get_slice(name)
        return view[rows] if rows is not None else view[:]
