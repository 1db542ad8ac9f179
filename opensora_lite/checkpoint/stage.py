"""A stage's checkpoints: written into a hidden temporary folder and renamed into place, so a checkpoint
is either complete or absent (a kill at any moment leaves the previous one the newest loadable); the
oldest pruned out of sight first; `final/` (whose presence marks the stage done) written the same way.

Engines that shard the model write its weights as a DCP folder (`model_dcp/`) in place of the
.safetensors file; every reader takes either. The optimizer state is the engine's (a DCP folder keyed by
parameter names for single/ddp/fsdp2: it resumes on another world size or engine)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from opensora_lite.checkpoint.files import diffusers_folder, is_dcp_folder, load_weights, publish, write_safetensors
from opensora_lite.checkpoint.state import read_trainer_state, write_trainer_state
from opensora_lite.errors import CheckpointError
from opensora_lite.layout import ADAPTER_FILE, EMA_FILE, MODEL_DCP, MODEL_FILE, SUMMARY_FILE, StageDir


class StageCheckpoints(StageDir):
    """StageDir with the writes and reads of its checkpoints."""

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
            write_safetensors(ema, tmp / EMA_FILE)
        write_trainer_state(tmp, trainer_state)
        final = self.checkpoint(step)
        publish(tmp, final)
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

    def read_checkpoint(self, path: Path) -> dict[str, Any]:
        """A checkpoint's trainer state, and its EMA weights and LoRA adapters where it holds them (the
        model weights and optimizer state are read by whoever knows their form: the task, the engine)."""
        out = {"trainer_state": read_trainer_state(path)}
        if (path / ADAPTER_FILE).is_file():
            out["adapters"] = load_weights(path / ADAPTER_FILE)
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
        metadata: dict[str, str] | None = None,
    ) -> Path:
        """`model`: the full weights (a LoRA stage's merged); `adapters` beside them for a LoRA stage."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / ".tmp-final"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        write_safetensors(model, tmp / MODEL_FILE, metadata)
        if ema is not None:
            write_safetensors(ema, tmp / EMA_FILE, metadata)
        if adapters is not None:
            write_safetensors(adapters, tmp / ADAPTER_FILE, adapter_metadata)
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
        publish(tmp, self.final)
        return self.final


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
    """The weights behind a path that may name them directly (a .safetensors file, a diffusers model
    folder, a DCP folder), a checkpoint folder (final/ or checkpoints/step_N), or a stage directory (its
    final/ weights; with `latest`, else its newest mid-stage checkpoint's). `ema`: the EMA weights."""
    path = Path(spec)
    if path.is_dir() and (diffusers_folder(path) is not None or is_dcp_folder(path)):
        return path
    if path.is_file():
        return path
    names = (EMA_FILE,) if ema else (MODEL_FILE, MODEL_DCP)
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
