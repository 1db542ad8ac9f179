"""A curriculum is a list of stages run in order, each starting from the previous stage's weights.

Stages whose final checkpoint exists are skipped, so re-running the same command after an
interruption picks up where it stopped (mid-stage too, from the newest checkpoint).
"""

from __future__ import annotations

import json
import logging

from opensora_lite.errors import Preempted
from opensora_lite.eval.shapes import format_confusion
from opensora_lite.layout import SUMMARY_FILE, StageDir
from opensora_lite.train.metrics import StageResult
from opensora_lite.train.runtime import Runtime
from opensora_lite.train.trainer import StageTrainer

log = logging.getLogger("opensora_lite")


def step_offset(rt: Runtime, name: str) -> int:
    """Global step at which a stage starts (steps of all stages before it), for W&B's x axis."""
    offset = 0
    for other, stage in rt.cfg.curriculum.stages.items():
        if other == name:
            return offset
        offset += stage.steps
    raise KeyError(name)


def run_stages(rt: Runtime, names: list[str]) -> list[StageResult]:
    results = []
    for name in names:
        sdir = StageDir(rt.run_dir / name)
        if sdir.done:
            summary = json.loads((sdir.final / SUMMARY_FILE).read_text())
            log.info("[%s] already complete (%s), skipping", name, sdir.final)
            results.append(StageResult(**summary))
            continue
        rt.tracker.event("stage_start", step_offset(rt, name), name)
        results.append(StageTrainer(rt, name, step_offset(rt, name)).run())
        # a signal during the stage's last step or its evaluation: stop before the next stage starts
        if name != names[-1] and (signame := rt.preemption.should_stop(rt.engine.world_size, rt.device)):
            raise Preempted(name, rt.cfg.curriculum.stages[name].steps, signame, "stage complete")
    return results


def format_results(results: list[StageResult]) -> str:
    """The end-of-run table the quickstart prints."""
    keys = sorted({k for r in results for k, v in r.metrics.items() if isinstance(v, float)})
    head = f"{'stage':<10} {'steps':>6} {'train':>7} {'eval':>6} {'loss':>8} " + " ".join(f"{k:>16}" for k in keys)
    lines = [head, "-" * len(head)]
    for r in results:
        vals = " ".join(f"{r.metrics[k]:>16.3f}" if k in r.metrics else f"{'-':>16}" for k in keys)
        lines.append(
            f"{r.name:<10} {r.steps:>6} {r.seconds:>6.0f}s {r.eval_seconds:>5.0f}s {r.final_loss:>8.4f} {vals}"
        )
    for r in results:  # the direction confusion of each stage that sampled video
        table = r.metrics.get("direction_confusion")
        if table:
            n = sum(sum(row.values()) for row in table.values())  # an audio_video stage reads only its straight clips
            lines += ["", f"{r.name}: motion direction, prompt x read ({n} clips)", format_confusion(table)]
    return "\n".join(lines)
