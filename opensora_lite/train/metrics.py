"""The loop's metrics: a window of steps summed between log lines, reduced over ranks when logged
(docs/run-directory.md lists the keys)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from opensora_lite.train.runtime import memory_gib

log = logging.getLogger("opensora_lite")


@dataclass
class StageResult:
    name: str
    steps: int
    seconds: float  # training wall time (the end-of-stage evaluation is eval_seconds)
    final_loss: float
    metrics: dict = field(default_factory=dict)
    skipped_samples: dict = field(default_factory=dict)
    resumed_from: int = 0
    eval_seconds: float = 0.0
    init: dict = field(default_factory=dict)  # the initial weights' report (train/stage_init.py)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def stage_layout(engine, nparams: int, image_condition: bool) -> dict:
    """How the engine laid the model out (the `layout` event, and its log line as "line"): parameters,
    blocks recomputed in backward, blocks sharded one by one."""
    out = dict(parameters=nparams, recomputed_blocks=engine.recomputed, sharded_blocks=engine.sharded_blocks)
    out["line"] = (
        f"{nparams / 1e6:.2f}M parameters, image condition {image_condition}, "
        f"{engine.recomputed} blocks recomputed in backward, {engine.sharded_blocks} blocks sharded one by one"
    )
    return out


class StepWindow:
    def __init__(self, engine, peak_tflops: float | None):
        self.engine, self.peak_tflops = engine, peak_tflops
        self._reset()

    def _reset(self) -> None:
        self.loss = self.flops = self.wait = 0.0
        self.n = self.tokens = self.samples = 0
        self.t0 = time.perf_counter()
        if self.engine.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.engine.device)  # the window's peak

    def micro(self, loss: float, tokens: int, samples: int, flops: float, wait: float, grad_accum: int) -> None:
        self.loss += loss / grad_accum
        self.tokens += tokens
        self.samples += samples
        self.flops += flops
        self.wait += wait

    def end_step(self) -> None:
        self.n += 1

    def close(self, step: int, grad_norm: float, lr: float, extra: dict) -> dict:
        """The window's metrics (every rank calls this: reductions), then a new window."""
        engine = self.engine
        elapsed = time.perf_counter() - self.t0
        # the slowest rank's data wait and the largest memory: what stalls a job or runs it out of memory
        worst = {"data_wait_s": self.wait / self.n, "data_stall_frac": self.wait / elapsed, **memory_gib(engine.device)}
        worst = dict(zip(worst, engine.all_reduce_floats(list(worst.values()), "max")))
        metrics = {
            "loss": engine.all_reduce_mean(self.loss / self.n),
            "lr": lr,
            "grad_norm": grad_norm,
            "samples_per_s": self.samples * engine.dp_size / elapsed,
            "tokens_per_s": self.tokens * engine.dp_size / elapsed,
            "step_time_s": elapsed / self.n,
            # model FLOPs per device (an SP group shares each sample; recomputation not counted)
            "tflops_per_device": self.flops / engine.cfg.sp_size / elapsed / 1e12,
            **worst,
            **extra,
            "step": step,
        }
        if self.peak_tflops and self.flops:  # (an autoencoder stage's FLOPs are not counted)
            metrics["mfu"] = metrics["tflops_per_device"] / self.peak_tflops
        self._reset()
        return metrics


def console_line(metrics: dict, steps: int) -> str:
    """A logged window as one console line (without a progress bar)."""
    mfu = f" MFU {metrics['mfu']:.1%}" if "mfu" in metrics else ""
    mem = metrics.get("gpu_mem_peak_gib", metrics["host_rss_gib"])
    return (
        f"step {metrics['step']}/{steps} loss {metrics['loss']:.4f} lr {metrics['lr']:.2e} "
        f"grad {metrics['grad_norm']:.3f} {metrics['samples_per_s']:.1f} samples/s "
        f"{metrics['tflops_per_device']:.3g} TFLOP/s/device{mfu} data wait {metrics['data_wait_s']:.3f}s "
        f"mem {mem:.2f} GiB"
    )


def report_stage_end(rt, ctx, result, ema: bool, paths, sheets, skipped, skip_file) -> None:
    """(rank 0) The stage_end event, the validation curve's last point, samples and sheets, the log lines."""
    stage, name, metrics = ctx.stage, ctx.name, result.metrics
    end = ctx.step_offset + stage.steps
    fields = dict(seconds=result.seconds, eval_seconds=result.eval_seconds, eval_ema=ema, final_loss=result.final_loss)
    rt.tracker.event("stage_end", end, name, **fields, **metrics)
    if stage.validate_every and stage.evaluate:  # the validation curve's last point
        scalars = {f"val/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
        rt.tracker.log({**scalars, "val/seconds": result.eval_seconds, "step": stage.steps}, end, name)
    rt.tracker.videos(paths, end, name)
    rt.tracker.images(sheets, end, name)
    for kind, sheet in sheets.items():
        log.info("[%s] contact sheet (%s): %s", name, kind, sheet)
    if skipped:
        log.info("[%s] skipped samples: %s (listed in %s)", name, dict(skipped), skip_file)
    shown = " ".join(
        f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items() if not isinstance(v, dict)
    )
    log.info(
        "[%s] done: trained in %.0fs, evaluated in %.0fs, final loss %.4f %s",
        name,
        result.seconds,
        result.eval_seconds,
        result.final_loss,
        shown,
    )
