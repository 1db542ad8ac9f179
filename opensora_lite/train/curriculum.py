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


# what a reading that ignores the prompt scores (one colour of six, one direction of four, ...)
CHANCE = {"colour_acc": 1 / 6, "direction_acc": 0.25, "speed_acc": 0.5, "shape_acc": 1 / 3,
          "audio_pitch_acc": 1 / 6, "v2a_pitch_acc": 1 / 6}  # fmt: skip


def format_results(results: list[StageResult]) -> str:
    """The end-of-run table the quickstart prints, then each video stage's confusion tables."""
    keys = sorted({k for r in results for k, v in r.metrics.items() if isinstance(v, float)})
    head = f"{'stage':<10} {'steps':>6} {'train':>7} {'eval':>6} {'loss':>8} " + " ".join(f"{k:>16}" for k in keys)
    lines = [head, "-" * len(head)]
    for r in results:
        vals = " ".join(f"{r.metrics[k]:>16.3f}" if k in r.metrics else f"{'-':>16}" for k in keys)
        lines.append(
            f"{r.name:<10} {r.steps:>6} {r.seconds:>6.0f}s {r.eval_seconds:>5.0f}s {r.final_loss:>8.4f} {vals}"
        )
    if any(k in CHANCE for k in keys):
        chance = " ".join(f"{CHANCE[k]:>16.2f}" if k in CHANCE else f"{'':>16}" for k in keys)
        lines.append(f"{'chance':<41} {chance}".rstrip())
    for r in results:  # each stage that sampled video: direction and speed, prompt x read
        for key, what in (("direction", "motion direction"), ("speed", "speed")):
            lines += _confusion_lines(r, key, what)
    if results:  # shape at the last stage only: the model the run delivers
        lines += _confusion_lines(results[-1], "shape", "shape")
    return "\n".join(lines)


def _confusion_lines(r: StageResult, key: str, what: str) -> list[str]:
    table = r.metrics.get(f"{key}_confusion")
    if not table:
        return []
    n = sum(sum(row.values()) for row in table.values())  # an audio_video stage reads only its straight clips
    return ["", f"{r.name}: {what}, prompt x read ({n} clips)", format_confusion(table)]
