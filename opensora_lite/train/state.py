"""Checkpoints: atomic, resumable, BFL-named weights.

Layout of a stage directory (runs/<run>/<stage>/):
    checkpoints/step_00000100/   model.safetensors, optimizer.pt, trainer_state.pt [, ema.safetensors]
    final/                       model.safetensors [, ema.safetensors], summary.json
    samples/                     mp4s from the end-of-stage sampling
A checkpoint is written into a hidden temporary folder and renamed into place, so it is either
complete or absent; `final/` existing is what marks a stage as done.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from opensora_lite.errors import CheckpointError
from opensora_lite.models.flux_weights import diffusers_folder

_STEP = re.compile(r"^step_(\d{8})$")
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, final: Path) -> None:
    """Rename a fully written folder into place (replacing an older one of the same name)."""
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
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
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata or {"format": "pt"})


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

    def save_checkpoint(
        self,
        step: int,
        model: dict[str, torch.Tensor],
        optimizer: dict,
        trainer_state: dict[str, Any],
        ema: dict[str, torch.Tensor] | None,
        keep: int,
    ) -> Path:
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        final = self.checkpoints / f"step_{step:08d}"
        tmp = self.checkpoints / f".tmp-step_{step:08d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_weights(tmp / MODEL_FILE, model)
        if ema is not None:
            save_weights(tmp / EMA_FILE, ema)
        torch.save(optimizer, tmp / "optimizer.pt")
        torch.save(trainer_state, tmp / "trainer_state.pt")
        _publish(tmp, final)
        for old in self.list_checkpoints()[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load_checkpoint(self, path: Path) -> dict[str, Any]:
        out = {
            "model": load_weights(path / MODEL_FILE),
            "optimizer": torch.load(path / "optimizer.pt", weights_only=False),
            "trainer_state": torch.load(path / "trainer_state.pt", weights_only=False),
        }
        if (path / EMA_FILE).is_file():
            out["ema"] = load_weights(path / EMA_FILE)
        return out

    def save_final(self, model: dict[str, torch.Tensor], ema: dict[str, torch.Tensor] | None, summary: dict) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / ".tmp-final"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_weights(tmp / MODEL_FILE, model, {"format": "pt", "naming": "bfl-flux"})
        if ema is not None:
            save_weights(tmp / EMA_FILE, ema, {"format": "pt", "naming": "bfl-flux"})
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
        _publish(tmp, self.final)
        return self.final


def resolve_weights_path(spec: str) -> Path:
    """A weights file from a path that may name the file, a stage dir, or a stage's final/ dir; or a
    diffusers Flux folder (read by models.flux_weights.read_flux_weights)."""
    path = Path(spec)
    if path.is_dir() and diffusers_folder(path) is not None:
        return path
    for candidate in (path, path / MODEL_FILE, path / "final" / MODEL_FILE):
        if candidate.is_file():
            return candidate
    raise CheckpointError(f"no weights at {spec} (looked for the file, {MODEL_FILE}, final/{MODEL_FILE})")
