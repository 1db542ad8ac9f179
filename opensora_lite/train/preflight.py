"""Checks that run before anything is created, so a bad start leaves nothing half-written."""

from __future__ import annotations

import tarfile
from pathlib import Path

from opensora_lite.checkpoint.stage import resolve_weights_path
from opensora_lite.config.schema import Config
from opensora_lite.data.loader import expand_shards
from opensora_lite.errors import CheckpointError, DataError
from opensora_lite.layout import StageDir


def check_data(cfg: Config) -> list[str]:
    spec = cfg.data.shards
    urls = expand_shards(spec)
    if not urls:
        hint = " (build the Shapes set with `osl-data`)" if "shapes" in spec else ""
        raise DataError(f"data.shards: no shards found at {spec!r}{hint}")
    local = [u for u in urls if Path(u).exists()]
    if local and len(local) == len(urls):
        readable = 0
        for url in local:
            try:
                with tarfile.open(url) as tar:
                    readable += tar.next() is not None
            except (tarfile.TarError, OSError):
                pass
        if readable == 0:
            raise DataError(f"data.shards: all {len(urls)} shards at {spec!r} are empty or unreadable")
    if cfg.eval.val_shards and not expand_shards(cfg.eval.val_shards):
        raise DataError(f"eval.val_shards: no shards found at {cfg.eval.val_shards!r}")
    return urls


def check_inits(cfg: Config, run_dir: Path, stages: list[str]) -> None:
    """Every stage to run must find its initial weights: a path, or a previous stage done or run first."""
    order = list(cfg.curriculum.stages)
    for name in stages:
        stage = cfg.curriculum.stages[name]
        if StageDir(run_dir / name).done:
            continue
        if stage.init == "none":
            continue
        if stage.init == "previous":
            prev = order[order.index(name) - 1]
            if prev in stages[: stages.index(name)] or StageDir(run_dir / prev).done:
                continue
            raise CheckpointError(
                f"curriculum.stages.{name}.init: previous stage '{prev}' has no final checkpoint in {run_dir / prev} "
                f"(run it first: osl-train run.stage={prev}, or point init at a checkpoint)"
            )
        try:
            resolve_weights_path(stage.init)
        except CheckpointError as exc:
            raise CheckpointError(f"curriculum.stages.{name}.init: {exc}") from None
