"""Where metrics go: metrics.jsonl in the run directory, and W&B when enabled. Rank 0 only.

The W&B run id is stored in the run directory on first use, so a resumed or requeued job keeps
logging into the same W&B run. A run resumed from a checkpoint older than what was logged reads as one
run: the sinks start by rewinding to the checkpoint's step (metrics.jsonl drops the records after it,
events apart; W&B rewinds the run's history with `resume_from`), so every step is logged once.

Nothing is written before `start()`: records wait in memory until the run's first stage has loaded its
weights and checkpoint (train/runtime.py `Runtime.commit`), so a refused start leaves no trace.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from pathlib import Path
from typing import Any

from opensora_lite.config.schema import LoggerConfig


class JsonlSink:
    def __init__(self, path: Path, rewind_to: int | None = None):
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rewound = rewind_to is not None and path.is_file() and self._rewind(rewind_to)
        self._fh = open(self.path, "a", buffering=1)

    def _rewind(self, step: int) -> bool:
        """Drop the records logged after global step `step` (a resumed job logs them again); events stay,
        they are the run's history (a preemption, a resume). Whether any was dropped."""
        kept, lines = [], self.path.read_text().splitlines()
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by a kill
                continue
            if "event" in record or (record.get("global_step") or 0) <= step:
                kept.append(line)
        if len(kept) == len(lines):
            return False
        tmp = self.path.with_name(self.path.name + ".partial")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        tmp.replace(self.path)
        return True

    def log(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._fh.write(json.dumps(clean) + "\n")

    def close(self) -> None:
        self._fh.close()


class WandbSink:
    def __init__(self, cfg: LoggerConfig, run_dir: Path, run_name: str, config: dict, rewind_to: int | None = None):
        import wandb

        id_file = run_dir / "wandb_id.txt"
        resumed = id_file.exists()
        run_id = id_file.read_text().strip() if resumed else f"{run_name}-{uuid.uuid4().hex[:8]}"
        id_file.write_text(run_id)
        w = cfg.wandb
        self.wandb = wandb
        common = dict(
            project=w.project,
            entity=w.entity,
            name=run_name,
            mode=w.mode,
            dir=str(run_dir),
            group=w.group,
            tags=list(w.tags),
            config=config,
        )
        self.run, self.first_step = None, 0
        if resumed and rewind_to is not None:  # drop the history after the checkpoint, then log on from it
            try:
                self.run = wandb.init(resume_from=f"{run_id}?_step={rewind_to}", **common)
                self.first_step = rewind_to + 1  # W&B keeps the rewind step's row and takes none at it again
            except Exception as exc:  # noqa: BLE001 -- a server without rewind: W&B keeps the first values
                logging.getLogger("opensora_lite").warning("W&B could not rewind run %s (%s)", run_id, exc)
        if self.run is None:
            self.run = wandb.init(id=run_id, resume="allow", **common)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        self.run.log(numbers, step=max(step, self.first_step))

    def videos(self, paths: list[Path], step: int, key: str) -> None:
        if paths:
            videos = [self.wandb.Video(str(p), format="mp4") for p in paths]
            self.run.log({key: videos}, step=max(step, self.first_step))

    def images(self, paths: dict[str, Path], step: int, prefix: str) -> None:
        if paths:
            images = {f"{prefix}/contact_sheet_{k}": self.wandb.Image(str(p), caption=p.name) for k, p in paths.items()}
            self.run.log(images, step=max(step, self.first_step))

    def summary(self, values: dict[str, Any]) -> None:
        for k, v in values.items():
            self.run.summary[k] = v

    def close(self) -> None:
        self.run.finish()


class Tracker:
    """Fan-out of metrics to the configured sinks. Inactive (no-op) on ranks other than 0. Records wait
    in memory until `start()` opens the sinks."""

    def __init__(self, cfg: LoggerConfig, run_dir: Path, run_name: str, config: dict, active: bool):
        self.active = active
        self.cfg, self.run_dir, self.run_name, self.config = cfg, run_dir, run_name, config
        self.jsonl: JsonlSink | None = None
        self.wandb: WandbSink | None = None
        self.started = False
        self._held: list[tuple[str, tuple, dict]] = []

    def start(self, rewind_to: int | None = None) -> None:
        """Open the sinks (rewound to global step `rewind_to` when resuming) and write what was held."""
        if self.started:
            return
        self.started = True
        if self.active and self.cfg.jsonl:
            self.jsonl = JsonlSink(self.run_dir / "metrics.jsonl", rewind_to)
            if not self.jsonl.rewound:  # nothing was logged past the checkpoint: W&B resumes as it is
                rewind_to = None
        if self.active and self.cfg.wandb.enabled:
            self.wandb = WandbSink(self.cfg, self.run_dir, self.run_name, self.config, rewind_to)
        held, self._held = self._held, []
        for method, args, kwargs in held:
            getattr(self, method)(*args, **kwargs)

    def rewind(self, step: int) -> None:
        """A stage resumed after the sinks started (a later stage of this process): rewind them to `step`."""
        if not self.started:
            return self.start(step)
        if self.jsonl:
            self.jsonl.close()
            self.jsonl = JsonlSink(self.jsonl.path, step)
            if not self.jsonl.rewound:
                return
        if self.wandb:
            self.wandb.close()
            self.wandb = WandbSink(self.cfg, self.run_dir, self.run_name, self.config, step)

    def _hold(self, method: str, *args, **kwargs) -> bool:
        if self.started or not self.active:
            return False
        self._held.append((method, args, kwargs))
        return True

    def log(self, metrics: dict[str, Any], step: int, stage: str) -> None:
        if self._hold("log", metrics, step, stage):
            return
        if self.jsonl:
            self.jsonl.log({"time": time.time(), "stage": stage, "global_step": step, **metrics})
        if self.wandb:
            self.wandb.log(metrics, step)

    def event(self, kind: str, step: int, stage: str, **fields: Any) -> None:
        """Stage boundaries, evaluations, resumes: recorded in jsonl and as W&B summary values."""
        if self._hold("event", kind, step, stage, **fields):
            return
        if self.jsonl:
            self.jsonl.log({"time": time.time(), "event": kind, "stage": stage, "global_step": step, **fields})
        if self.wandb:
            numeric = {f"{stage}/{k}": v for k, v in fields.items() if isinstance(v, (int, float))}
            self.wandb.log({f"event/{kind}": 1, **numeric}, step)
            self.wandb.summary(numeric)

    def videos(self, paths: list[Path], step: int, stage: str) -> None:
        if self._hold("videos", paths, step, stage):
            return
        if self.wandb:
            self.wandb.videos(paths, step, f"{stage}/samples")

    def images(self, paths: dict[str, Path], step: int, stage: str) -> None:
        """Pictures by name (the stage's contact sheets), logged as W&B images."""
        if self._hold("images", paths, step, stage):
            return
        if self.wandb:
            self.wandb.images(paths, step, stage)

    def close(self) -> None:
        for sink in (self.jsonl, self.wandb):
            if sink:
                sink.close()
