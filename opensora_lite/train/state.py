"""Checkpoints: atomic, resumable, BFL-named weights.

Layout of a stage directory (runs/<run>/<stage>/):
    checkpoints/step_00000100/   model.safetensors (or model_dcp/), optim_dcp/, trainer_state.json
                                 + trainer_state.safetensors [, ema.safetensors]
    final/                       model.safetensors [, ema.safetensors], summary.json
    samples/                     mp4s from the end-of-stage sampling
Engines that shard the model write its weights as a torch.distributed.checkpoint folder (`model_dcp/`)
in place of the .safetensors file; every reader takes either. The optimizer state is always a DCP
folder keyed by parameter names, so a checkpoint resumes on another world size or engine.
A checkpoint is written into a hidden temporary folder and renamed into place, so it is either
complete or absent; `final/` existing is what marks a stage as done.

The trainer state (step, scheduler, loader position, noise generators) is JSON with its tensors in a
safetensors file beside it: reading a checkpoint copied from someone else's run runs no pickle.
Checkpoints of earlier versions (`trainer_state.pt`) are read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from opensora_lite.errors import CheckpointError
from opensora_lite.models.flux_weights import diffusers_folder, is_dcp_folder, write_safetensors

_STEP = re.compile(r"^step_(\d{8})$")
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
ADAPTER_FILE = "adapters.safetensors"  # a LoRA stage's trainable tensors (docs/lora.md)
MODEL_DCP = "model_dcp"
OPTIM_DCP = "optim_dcp"  # single, ddp, fsdp2: by parameter name, any world size
OPTIM_DEEPSPEED = "optim_deepspeed"  # DeepSpeed's own checkpoint: same world size
OPTIM_COLOSSALAI = "optim_colossalai"  # the Booster's sharded optimizer checkpoint: any world size
OPTIMIZER_FOLDERS = {
    OPTIM_DCP: "single|ddp|fsdp2",
    OPTIM_DEEPSPEED: "deepspeed_zero2|deepspeed_zero3",
    OPTIM_COLOSSALAI: "colossalai_zero2|colossalai_hybrid_sp",
}
EMA_DCP = "ema_dcp"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, final: Path) -> None:
    """Rename a fully written folder into place (replacing an older one of the same name)."""
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        else:
            _fsync_dir(f)
    if final.exists():
        old = final.with_name(f".old-{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    _fsync_dir(final.parent)


def save_weights(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    write_safetensors(state, path, metadata)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    return load_file(str(path))


class StageDir:
    def __init__(self, root: Path):
        self.root = root
        self.checkpoints = root / "checkpoints"
        self.final = root / "final"
        self.samples = root / "samples"

    @property
    def done(self) -> bool:
        return (self.final / MODEL_FILE).is_file()

    def list_checkpoints(self) -> list[Path]:
        if not self.checkpoints.is_dir():
            return []
        found = [p for p in self.checkpoints.iterdir() if p.is_dir() and _STEP.match(p.name)]
        return sorted(found, key=lambda p: int(_STEP.match(p.name).group(1)))

    def latest_checkpoint(self) -> Path | None:
        found = self.list_checkpoints()
        return found[-1] if found else None

    def checkpoint_tmp(self, step: int) -> Path:
        """Where the checkpoint of `step` is written (by every rank) before it is published."""
        return self.checkpoints / f".tmp-step_{step:08d}"

    def prepare_checkpoint(self, step: int) -> Path:
        """(rank 0) An empty temporary folder for the checkpoint of `step`."""
        tmp = self.checkpoint_tmp(step)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        return tmp

    def publish_checkpoint(
        self, step: int, trainer_state: dict[str, Any], ema: dict[str, torch.Tensor] | None, keep: int
    ) -> Path:
        """(rank 0, after every rank wrote its part) Add the trainer state, rename into place, prune."""
        tmp = self.checkpoint_tmp(step)
        if ema is not None:
            save_weights(tmp / EMA_FILE, ema)
        write_trainer_state(tmp, trainer_state)
        final = self.checkpoints / f"step_{step:08d}"
        _publish(tmp, final)
        for old in self.list_checkpoints()[:-keep]:  # out of sight first: a kill mid-delete leaves no torso
            gone = old.with_name(f".del-{old.name}")
            old.rename(gone)
            shutil.rmtree(gone, ignore_errors=True)
        return final

    def discard_incomplete(self) -> list[str]:
        """(rank 0, before a stage starts) Remove what a killed job left half-written: checkpoints not yet
        renamed into place, old ones being deleted. Returns their names, for the log."""
        if not self.checkpoints.is_dir():
            return []
        leftovers = [p for p in self.checkpoints.iterdir() if p.name.startswith((".tmp-", ".del-"))]
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)
        return sorted(p.name for p in leftovers)

    @staticmethod
    def checkpoint_weights(path: Path) -> Path:
        """The model weights of a checkpoint folder: its safetensors file or its DCP folder."""
        return path / MODEL_FILE if (path / MODEL_FILE).is_file() else path / MODEL_DCP

    def load_checkpoint(self, path: Path, weights: bool = True) -> dict[str, Any]:
        """Model weights (full, from either layout; not with `weights=False`, for a model that reads its
        shards itself), trainer state and EMA; the optimizer is the engine's."""
        from opensora_lite.models.flux_weights import read_flux_weights

        out = {"trainer_state": read_trainer_state(path)}
        if (path / ADAPTER_FILE).is_file():
            out["adapters"] = load_weights(path / ADAPTER_FILE)
        if weights:
            out["model"] = read_flux_weights(self.checkpoint_weights(path))[0]
        if (path / EMA_FILE).is_file():
            out["ema"] = load_weights(path / EMA_FILE)
        return out

    def save_final(
        self,
        model: dict[str, torch.Tensor],
        ema: dict[str, torch.Tensor] | None,
        summary: dict,
        adapters: dict[str, torch.Tensor] | None = None,
        adapter_metadata: dict[str, str] | None = None,
    ) -> Path:
        """`model`: full BFL weights (a LoRA stage's merged); `adapters` beside them for a LoRA stage."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / ".tmp-final"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_weights(tmp / MODEL_FILE, model, {"format": "pt", "naming": "bfl-flux"})
        if ema is not None:
            save_weights(tmp / EMA_FILE, ema, {"format": "pt", "naming": "bfl-flux"})
        if adapters is not None:
            save_weights(tmp / ADAPTER_FILE, adapters, adapter_metadata)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
        _publish(tmp, self.final)
        return self.final


STATE_JSON, STATE_TENSORS, STATE_PICKLE = "trainer_state.json", "trainer_state.safetensors", "trainer_state.pt"


def write_trainer_state(folder: Path, state: dict[str, Any]) -> None:
    """`state` as JSON; each tensor in it (generator states) replaced by {"tensor": key} into a safetensors
    file. Only JSON types and tensors are allowed, so what is written is what is read back."""
    from safetensors.torch import save_file

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
    """The trainer state of a checkpoint folder: JSON + safetensors, or an older checkpoint's pickle read
    with weights_only=True (tensors and plain containers only)."""
    if (folder / STATE_JSON).is_file():
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
    if (folder / STATE_PICKLE).is_file():
        try:
            return torch.load(folder / STATE_PICKLE, weights_only=True)
        except Exception as exc:  # a foreign pickle (objects weights_only refuses) or a damaged file
            raise CheckpointError(f"{folder / STATE_PICKLE}: not a trainer state this version reads ({exc})") from None
    raise CheckpointError(f"{folder} has no trainer state ({STATE_JSON})")


def resolve_adapters_path(spec: str) -> Path:
    """A LoRA stage's adapters: the file itself, a checkpoint folder's, or a stage directory's (final/,
    else its newest mid-stage checkpoint's)."""
    path = Path(spec)
    if path.is_file():
        return path
    newest = StageDir(path).latest_checkpoint() if path.is_dir() else None
    for folder in [path, path / "final", *([newest] if newest else [])]:
        if (folder / ADAPTER_FILE).is_file():
            return folder / ADAPTER_FILE
    raise CheckpointError(f"no LoRA adapters ({ADAPTER_FILE}) at {spec}: is it a stage trained with stage.lora?")


def resolve_weights_path(spec: str, ema: bool = False, latest: bool = False) -> Path:
    """The weights behind a path that may name them directly (a .safetensors file, a diffusers Flux folder,
    a DCP folder), a checkpoint folder (final/ or checkpoints/step_N), or a stage directory (its final/
    weights; with `latest`, else its newest mid-stage checkpoint's). `ema`: the EMA weights."""
    path = Path(spec)
    if path.is_dir() and (diffusers_folder(path) is not None or is_dcp_folder(path)):
        return path
    if path.is_file():
        return path
    names = (EMA_FILE, EMA_DCP) if ema else (MODEL_FILE, MODEL_DCP)
    folders = [path, path / "final"]
    newest = StageDir(path).latest_checkpoint() if latest and path.is_dir() else None
    if newest is not None:
        folders.append(newest)
    for folder in folders:
        for name in names:
            if (folder / name).is_file() or (folder / name).is_dir():
                return folder / name
    looked = ", ".join(f"{f.name if f != path else '.'}/{n}" for f in folders for n in names)
    raise CheckpointError(f"no {'EMA ' if ema else ''}weights at {spec} (looked for {looked})")
