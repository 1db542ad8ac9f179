"""Validation during training (`stage.validate_every`): the end-of-stage evaluation, every N steps.

It samples the same fixed prompts, seeds and I2V references as the evaluation at the end of the stage
(train/evaluation.py), from the EMA weights when EMA is on, and logs the Shapes metrics (when
eval.kind=shapes) into metrics.jsonl / W&B as `val/*` at the step, with the mp4s, contact sheets and
its cost in seconds (`val/seconds`). Output: <stage>/validation/step_<N>/.

Training's trajectory does not depend on it: sampling draws its noise from its own generators, and
everything else it might draw (a model copy's init, a VAE's posterior) happens inside a forked torch
RNG, so the global streams continue as if it had not run. Sharded engines gather the weights (every
rank takes part); rank 0 samples from a local copy.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from opensora_lite.models.flux_weights import load_into
from opensora_lite.models.mmdit import MMDiT
from opensora_lite.train.evaluation import evaluate_stage

log = logging.getLogger("opensora_lite")


class Validator:
    def __init__(self, trainer):
        self.t = trainer
        self.every = trainer.stage.validate_every

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0 and step < self.t.stage.steps

    def run(self, model, ema, step: int) -> dict:
        """Validate at `step` (all ranks call this); returns the metrics logged (empty on other ranks)."""
        t, engine, rt = self.t, self.t.engine, self.t.rt
        began = time.perf_counter()
        devices = [engine.device] if engine.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            weights = ema.state_dict() if ema else None  # a collective where EMA is sharded
            if weights is None and (engine.sp is not None or engine.shards_parameters):
                weights = engine.full_state_dict(model)
            metrics: dict = {}
            if engine.is_main:
                rt.place_encoders(engine.device)
                sample_from = engine.unwrap(model) if weights is None else self._copy(weights)
                folder = t.dir.root / "validation" / f"step_{step:06d}" / "samples"
                metrics, paths, sheets = evaluate_stage(rt, sample_from, t.stage, folder)
                if t.cfg.data.kind == "cached":
                    rt.place_encoders("cpu")
                seconds = time.perf_counter() - began
                scalars = {f"val/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
                metrics = {**scalars, "val/seconds": seconds, "val/ema": bool(ema), "step": step}
                rt.tracker.log(metrics, t.step_offset + step, t.name)
                rt.tracker.videos(paths, t.step_offset + step, f"{t.name}/validation")
                rt.tracker.images(sheets, t.step_offset + step, f"{t.name}/validation")
                log.info(
                    "[%s] validation at step %d (%.1fs%s): %s",
                    t.name,
                    step,
                    seconds,
                    ", EMA" if ema else "",
                    " ".join(f"{k[4:]}={v:.3f}" for k, v in scalars.items()) or Path(folder).parent,
                )
            engine.barrier()
        return metrics

    def _copy(self, weights: dict) -> MMDiT:
        local = MMDiT(self.t.cfg.model, image_condition=self.t.image_condition)
        load_into(local, weights, "validation weights")
        return local.to(self.t.engine.device)
