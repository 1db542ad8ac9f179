"""Validation during training (`stage.validate_every`): the end-of-stage evaluation, every N steps.

It samples the same fixed prompts, seeds and I2V references as the evaluation at the end of the stage
(train/evaluation.py), from the EMA weights when EMA is on, and logs the Shapes metrics (when
eval.kind=shapes) into metrics.jsonl / W&B as `val/*` at the step, with the mp4s, contact sheets and
its cost in seconds (`val/seconds`). Output: <stage>/validation/step_<N>/. With `eval.val_shards`
it also reports the flow loss on held-out shards at fixed timesteps (`val/loss_t<t>`, `val/loss`).

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
import torch.nn.functional as F

from opensora_lite.data.cache import bucket_table
from opensora_lite.data.loader import BucketedVideoStream, expand_shards
from opensora_lite.diffusion import flow
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
                weights = t.full_weights(model)
            metrics: dict = {}
            if engine.is_main:
                rt.place_encoders(engine.device)
                sample_from = engine.unwrap(model) if weights is None else self._copy(weights)
                folder = t.dir.root / "validation" / f"step_{step:06d}" / "samples"
                if t.task:  # an autoencoder stage: reconstruction scores on the held-out clips
                    metrics, paths, sheets = t.task.evaluate(rt, sample_from, folder)
                else:
                    metrics, paths, sheets = evaluate_stage(rt, sample_from, t.stage, folder)
                if t.cfg.eval.val_shards and not t.task:
                    metrics.update(held_out_loss(rt, sample_from, t.stage, t.cfg.run.seed))
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
        if self.t.task:
            return self.t.task.copy_model(weights)
        local = MMDiT(self.t.cfg.model, image_condition=self.t.image_condition)
        load_into(local, weights, "validation weights")
        return local.to(self.t.engine.device)


@torch.no_grad()
def held_out_loss(rt, model, stage, seed: int) -> dict[str, float]:
    """The flow loss on `eval.val_batches` batches of the held-out `eval.val_shards` (the stage's buckets,
    read in a fixed order), at each of `eval.val_timesteps` with fixed noise: the same batches, times and
    noise every validation, so the numbers form a curve. Text-to-video (an empty condition)."""
    cfg = rt.cfg
    stream = BucketedVideoStream(
        expand_shards(cfg.eval.val_shards),
        bucket_table(cfg, stage),
        cfg.data.target_fps,
        seed=seed,
        shuffle_buffer=1,
        caption_key=cfg.data.caption_key,
        caption_template=cfg.data.caption_template,
        image_caption_template=cfg.data.image_caption_template,
    )
    batches, noise = iter(stream), torch.Generator().manual_seed(seed)
    times = list(cfg.eval.val_timesteps)
    sums = dict.fromkeys(times, 0.0)
    model.eval()
    for _ in range(cfg.eval.val_batches):
        batch = next(batches)
        x0 = rt.ae.encode(batch["video"].to(rt.device), sample=False)
        t5, clip = rt.text.encode(batch["captions"])
        cond = None
        if getattr(model, "cond_in", None) is not None:
            cond = x0.new_zeros(x0.shape[0], x0.shape[1] + 1, *x0.shape[2:])
        for t in times:
            eps = torch.randn(x0.shape, generator=noise).to(x0.device)
            tt = torch.full((x0.shape[0],), t, device=x0.device)
            with rt.autocast():
                pred = model(flow.add_noise(x0, eps, tt, cfg.flow.sigma_min), tt, t5, clip, cond=cond)
            sums[t] += F.mse_loss(pred.float(), flow.velocity_target(x0, eps, cfg.flow.sigma_min)).item()
    model.train()
    out = {f"loss_t{t:g}": s / cfg.eval.val_batches for t, s in sums.items()}
    out["loss"] = sum(out.values()) / len(times)
    return out
