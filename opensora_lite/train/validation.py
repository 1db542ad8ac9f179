"""Validation during training (`stage.validate_every`): the end-of-stage evaluation, every N steps.

It samples the same fixed prompts, seeds and I2V references as the evaluation at the end of the stage
(the task's evaluate: train/evaluation.py for diffusion), from the EMA weights when EMA is on, and logs
the metrics into metrics.jsonl / W&B as `val/*` at the step, with the mp4s, contact sheets and its cost
in seconds (`val/seconds`). Output: <stage>/validation/step_<N>/. With `eval.val_shards` a diffusion
stage also reports the flow loss on held-out shards at fixed timesteps (`val/loss_t<t>`, `val/loss`).

Training's trajectory does not depend on it: sampling draws its noise from its own generators, and
everything else it might draw (a model copy's init, a VAE's posterior) happens inside a forked torch
RNG, so the global streams continue as if it had not run. Sharded engines gather the weights (every
rank takes part); rank 0 samples from a local copy.

Its interface is narrow: when it is due, how to get a model to sample from (the trainer's
`sampling_model`), what an evaluation is (the task's), where results go (a report callback).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger("opensora_lite")


class Validator:
    def __init__(
        self,
        name: str,
        every: int,
        steps: int,
        engine,
        sampling_model: Callable,
        evaluate: Callable,
        report: Callable,
        folder: Callable[[int], Path],
        place_encoders: Callable[[bool], None],
    ):
        """`sampling_model(model, ema)`: a model to sample from on rank 0 (a collective: every rank calls
        it); `evaluate(model, folder, validation=True)` -> (metrics, paths, sheets); `report(metrics,
        paths, sheets, step)`: into the tracker; `folder(step)`: where the samples go;
        `place_encoders(sampling)`: the frozen encoders onto the device for sampling and back."""
        self.name, self.every, self.steps, self.engine = name, every, steps, engine
        self.sampling_model, self.evaluate, self.report = sampling_model, evaluate, report
        self.folder, self.place_encoders = folder, place_encoders

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0 and step < self.steps

    def run(self, model, ema, step: int) -> dict:
        """Validate at `step` (all ranks call this); returns the metrics logged (empty on other ranks)."""
        engine = self.engine
        began = time.perf_counter()
        devices = [engine.device] if engine.device.type == "cuda" else []
        metrics: dict = {}
        with torch.random.fork_rng(devices=devices):
            sample_from = self.sampling_model(model, ema)
            if engine.is_main:
                self.place_encoders(True)
                metrics, paths, sheets = self.evaluate(sample_from, self.folder(step), validation=True)
                self.place_encoders(False)
                seconds = time.perf_counter() - began
                scalars = {f"val/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
                metrics = {**scalars, "val/seconds": seconds, "val/ema": bool(ema), "step": step}
                self.report(metrics, paths, sheets, step)
                log.info(
                    "[%s] validation at step %d (%.1fs%s): %s",
                    self.name,
                    step,
                    seconds,
                    ", EMA" if ema else "",
                    " ".join(f"{k[4:]}={v:.3f}" for k, v in scalars.items()) or self.folder(step).parent,
                )
            engine.barrier()
        return metrics
