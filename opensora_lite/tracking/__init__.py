"""Where metrics go: metrics.jsonl in the run directory, and W&B when enabled. Rank 0 only.

The W&B run id is stored in the run directory on first use, so a resumed or requeued job keeps
logging into the same W&B run.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from pathlib import Path
from typing import Any

from opensora_lite.config.schema import LoggerConfig


class JsonlSink:
    def __init__(self, path: Path):
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", buffering=1)

    def log(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._fh.write(json.dumps(clean) + "\n")

    def close(self) -> None:
        self._fh.close()


class WandbSink:
    def __init__(self, cfg: LoggerConfig, run_dir: Path, run_name: str, config: dict):
        import wandb

        id_file = run_dir / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else f"{run_name}-{uuid.uuid4().hex[:8]}"
        id_file.write_text(run_id)
        w = cfg.wandb
        self.wandb = wandb
        self.run = wandb.init(
            project=w.project,
            entity=w.entity,
            name=run_name,
            id=run_id,
            resume="allow",
            mode=w.mode,
            dir=str(run_dir),
            group=w.group,
            tags=list(w.tags),
            config=config,
        )

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.run.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def videos(self, paths: list[Path], step: int, key: str) -> None:
        if paths:
            self.run.log({key: [self.wandb.Video(str(p), format="mp4") for p in paths]}, step=step)

    def images(self, paths: dict[str, Path], step: int, prefix: str) -> None:
        if paths:
            images = {f"{prefix}/contact_sheet_{k}": self.wandb.Image(str(p), caption=p.name) for k, p in paths.items()}
            self.run.log(images, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        for k, v in values.items():
            self.run.summary[k] = v

    def close(self) -> None:
        self.run.finish()


class Tracker:
    """Fan-out of metrics to the configured sinks. Inactive (no-op) on ranks other than 0."""

    def __init__(self, cfg: LoggerConfig, run_dir: Path, run_name: str, config: dict, active: bool):
        self.active = active
        self.jsonl = JsonlSink(run_dir / "metrics.jsonl") if active and cfg.jsonl else None
        self.wandb = WandbSink(cfg, run_dir, run_name, config) if active and cfg.wandb.enabled else None

    def log(self, metrics: dict[str, Any], step: int, stage: str) -> None:
        if self.jsonl:
            self.jsonl.log({"time": time.time(), "stage": stage, "global_step": step, **metrics})
        if self.wandb:
            self.wandb.log(metrics, step)

    def event(self, kind: str, step: int, stage: str, **fields: Any) -> None:
        """Stage boundaries, evaluations, resumes: recorded in jsonl and as W&B summary values."""
        if self.jsonl:
            self.jsonl.log({"time": time.time(), "event": kind, "stage": stage, "global_step": step, **fields})
        if self.wandb:
            numeric = {f"{stage}/{k}": v for k, v in fields.items() if isinstance(v, (int, float))}
            self.wandb.log({f"event/{kind}": 1, **numeric}, step)
            self.wandb.summary(numeric)

    def videos(self, paths: list[Path], step: int, stage: str) -> None:
        if self.wandb:
            self.wandb.videos(paths, step, f"{stage}/samples")

    def images(self, paths: dict[str, Path], step: int, stage: str) -> None:
        """Pictures by name (the stage's contact sheets), logged as W&B images."""
        if self.wandb:
            self.wandb.images(paths, step, stage)

    def close(self) -> None:
        for sink in (self.jsonl, self.wandb):
            if sink:
                sink.close()
