"""Train one stage: the loop and its plumbing; what a step computes comes from the stage's task.

The loop is the data flow of docs/design.md: batch -> task step (encoders, noising, model, loss,
backward through the engine) -> engine step -> EMA -> metrics -> checkpoints. The trainer owns the
engine and optimizer, checkpoints and loader state, preemption, metrics and tracking, EMA, validation
and the end-of-stage evaluation; the task (train/tasks/) gives the model, the step, its own checkpoint
state and what an evaluation samples; the weights component (train/weights.py) how the model gets its
values (init or resume; LoRA and meta-device starts are forms of it). A stage resumes from its newest
complete checkpoint when one exists.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections import Counter

import torch
from tqdm import tqdm

from opensora_lite.checkpoint.stage import StageCheckpoints
from opensora_lite.checkpoint.writer import CheckpointWriter
from opensora_lite.config.validate import async_checkpoint_note
from opensora_lite.data.loader import LoaderState
from opensora_lite.dtypes import matmul_precision
from opensora_lite.errors import Preempted
from opensora_lite.models.flops import peak_tflops
from opensora_lite.train.ema import EMA
from opensora_lite.train.generators import StageGenerators
from opensora_lite.train.metrics import StageResult, StepWindow, console_line, report_stage_end, stage_layout
from opensora_lite.train.optim import build_optimizer, build_scheduler
from opensora_lite.train.runtime import Runtime
from opensora_lite.train.skips import SkipList
from opensora_lite.train.stage_init import InitReport
from opensora_lite.train.stream import stage_batches
from opensora_lite.train.tasks import StageContext, build_task
from opensora_lite.train.validation import Validator
from opensora_lite.train.weights import stage_weights

log = logging.getLogger("opensora_lite")


class StageTrainer:
    def __init__(self, rt: Runtime, name: str, step_offset: int = 0):
        self.rt, self.name, self.step_offset = rt.for_stage(name), name, step_offset
        self.cfg, self.engine = self.rt.cfg, self.rt.engine
        self.stage = self.cfg.curriculum.stages[name]
        self.index = list(self.cfg.curriculum.stages).index(name)
        self.dir = StageCheckpoints(self.rt.stage_dir(name))
        self.ctx = StageContext(self.rt, name, self.index, step_offset, rt.cfg)
        self.task = build_task(self.ctx)
        self.weights = stage_weights(self.ctx, self.task, self.dir)
        self.seed = self.cfg.run.seed

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> StageResult:
        stage, engine, rt, task = self.stage, self.engine, self.rt, self.task
        torch.manual_seed(self.seed * 1000 + self.index)  # model init: identical on every rank
        with engine.model_context() if self.weights.on_meta else contextlib.nullcontext():
            model = task.build_model()
        if engine.is_main and (leftovers := self.dir.discard_incomplete()):
            log.warning("[%s] removed incomplete checkpoint folders of an interrupted job: %s", self.name, leftovers)
        resume = self.dir.latest_checkpoint()
        ckpt = self.dir.read_checkpoint(resume) if resume else None
        self.weights.before_prepare(model, resume, ckpt)
        # (a ZeRO-3 parameter built partitioned holds a placeholder; ds_numel is its full size)
        nparams = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
        make_opt = lambda params: build_optimizer(params, stage.optim, engine.device)  # noqa: E731
        model, opt = engine.prepare(model, make_opt, stage.optim.grad_clip, task.blocks(model))
        self.weights.after_prepare(model, resume)
        sched = build_scheduler(opt, stage.optim, stage.steps)
        ema = EMA(engine.unwrap(model), stage.ema_decay) if stage.ema_decay > 0 else None
        gens = StageGenerators(engine.device, self.seed * 1_000_003 + self.index * 7919 + engine.dp_rank)
        start, data_state = (
            (0, LoaderState()) if ckpt is None else self._restore(resume, ckpt, model, opt, sched, gens, ema)
        )
        rt.commit(self.step_offset + start if ckpt else None)  # weights fit: the run directory is this run's now
        if ckpt:
            log.info("[%s] resumed from %s (step %d)", self.name, resume, start)
            rt.tracker.event("resume", self.step_offset + start, self.name, from_step=start, checkpoint=str(resume))
        layout = stage_layout(engine, nparams, task.image_condition)
        log.info("[%s] %s: %d steps, %s", self.name, stage.description or "stage", stage.steps, layout.pop("line"))
        rt.tracker.event("layout", self.step_offset + start, self.name, **layout)
        report = lambda metrics, at: rt.tracker.log(metrics, self.step_offset + at, self.name)  # noqa: E731
        asynchronous = stage.async_checkpoint and self.weights.asynchronous
        self.writer = CheckpointWriter(
            engine, self.dir, stage.keep_checkpoints, asynchronous, report, self.weights.save_model()
        )
        if engine.is_main and (note := async_checkpoint_note(self.cfg, stage)):
            log.info("[%s] %s", self.name, note)
        data = stage_batches(self.rt, self.name, self.index, self.task.image_condition, data_state)
        validator = self._validator()
        if self.cfg.data.kind == "cached":
            rt.text.empty()  # kept where training runs (CFG dropout) while the encoders are parked
            rt.place_encoders("cpu")  # the cache holds their outputs: free the device until sampling
        model.train()
        run = self.cfg.run
        peak = run.peak_tflops or peak_tflops(rt.device, matmul_precision(run.dtype, run.tf32))
        window, skipped = StepWindow(engine, peak), Counter()
        self.skips = SkipList(self.dir.root, engine, start)  # <stage>/skipped.tsv
        show_bar = engine.is_main and self.cfg.logger.progress_bar and sys.stderr.isatty()
        bar = tqdm(total=stage.steps, initial=start, desc=self.name, disable=not show_bar, dynamic_ncols=True)
        began, loss_value = time.perf_counter(), float("nan")
        for step in range(start, stage.steps):
            for micro in range(stage.grad_accum):
                t_wait = time.perf_counter()
                batch = next(data)
                wait = time.perf_counter() - t_wait
                data_state.batches += 1
                data_state.failed.extend(batch["failed"])
                skipped.update(batch["skipped"])
                self.skips.add(step + 1, batch.get("skipped_rows", ()))
                last = micro == stage.grad_accum - 1
                loss, tokens, flops = task.micro_step(model, batch, gens.host, step, last, gens.device)
                window.micro(float(loss), tokens, len(batch["captions"]), flops, wait, stage.grad_accum)
            grad_norm = engine.step(model, opt)
            task.after_step(step)
            sched.step()
            if ema:
                ema.update(engine.unwrap(model))
            window.end_step()
            done = step + 1
            if done % stage.log_every == 0 or done == stage.steps:
                loss_value = self._log(
                    window.close(done, grad_norm, opt.param_groups[0]["lr"], task.take_metrics()), bar
                )
            bar.update(1)
            if validator.due(done):
                validator.run(model, ema, done)
            saved = stage.checkpoint_every and done % stage.checkpoint_every == 0 and done < stage.steps
            if saved:
                self._checkpoint(model, opt, sched, gens, ema, done, data_state)
            signame = rt.preemption.should_stop(engine.world_size, engine.device) if done < stage.steps else None
            if signame:  # every rank stops here: checkpoint, then the entry point requeues (or ends, on Ctrl-C)
                if not saved:
                    self._checkpoint(model, opt, sched, gens, ema, done, data_state)
                self.writer.wait(done)
                bar.close()
                rt.tracker.event("preempted", self.step_offset + done, self.name, at_step=done, signal=signame)
                raise Preempted(self.name, done, signame)
        bar.close()
        result = self._finish(model, ema, start, began, loss_value, skipped)
        engine.release(model)  # the next stage builds its own: the backend lets go of this one
        return result

    # -- components ------------------------------------------------------------------------------
    def _validator(self) -> Validator:
        rt, at = self.rt, lambda step: self.step_offset + step

        def report(metrics, paths, sheets, step) -> None:
            rt.tracker.log(metrics, at(step), self.name)
            rt.tracker.videos(paths, at(step), f"{self.name}/validation")
            rt.tracker.images(sheets, at(step), f"{self.name}/validation")

        def place(sampling: bool) -> None:
            if sampling or self.cfg.data.kind == "cached":
                rt.place_encoders(self.engine.device if sampling else "cpu")

        folder = lambda step: self.dir.root / "validation" / f"step_{step:06d}" / "samples"  # noqa: E731
        sampling = lambda model, ema: self.sampling_model(model, ema.state_dict() if ema else None)  # noqa: E731
        return Validator(self.name, self.stage.validate_every, self.stage.steps, self.engine, sampling,
                         self.task.evaluate, report, folder, place)  # fmt: skip

    def _log(self, metrics: dict, bar) -> float:
        self.rt.tracker.log(metrics, self.step_offset + metrics["step"], self.name)
        if bar.disable and self.engine.is_main and self.cfg.logger.console:
            log.info("[%s] %s", self.name, console_line(metrics, self.stage.steps))
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.1e}", sps=f"{metrics['samples_per_s']:.1f}")
        return metrics["loss"]

    def full_weights(self, model, adapters: bool = False):
        """The model's full fp32 weights on rank 0 (every rank calls it); a LoRA model's merged. With
        `adapters`: (weights, the stored adapters or None, their metadata or None)."""
        out = self.weights.final(model, self.engine.full_state_dict(model))
        return out if adapters else out[0]

    def sampling_model(self, model, ema_state: dict | None, full: dict | None = None):
        """The model rank 0 samples from (None on other ranks; every rank calls it): the EMA's weights in
        a copy, a gathered copy where the model is sharded or split over an SP group, else itself."""
        engine, weights = self.engine, ema_state
        if weights is None and (engine.sp is not None or engine.shards_parameters):
            weights = full if full is not None else self.full_weights(model)
        if not engine.is_main:
            return None
        return engine.unwrap(model) if weights is None else self.task.eval_model(weights)

    # -- checkpoints -----------------------------------------------------------------------------
    def _checkpoint(self, model, opt, sched, gens, ema, step: int, data_state: LoaderState) -> None:
        """Every rank writes its part (weights, optimizer), rank 0 the trainer state (checkpoint/writer.py)."""
        engine = self.engine
        self.skips.flush()  # the skips up to this step: a resume from here lists the later ones again

        def trainer_state() -> dict | None:
            failed = [key for rank in engine.all_gather_object(data_state.failed) for key in rank]
            return {
                "step": step,
                "data": LoaderState(data_state.batches, failed).as_dict(),
                "data_layout": {"dp_size": engine.dp_size, "num_workers": self.cfg.data.num_workers},
                "scheduler": sched.state_dict(),
                **gens.checkpoint_state(engine),  # each rank's random streams
                "task": self.task.state_dict(),  # e.g. an autoencoder stage's discriminator
            }

        self.writer.save(step, model, opt, ema, trainer_state, self.task.companions())

    def _restore(self, resume, ckpt: dict, model, opt, sched, gens, ema) -> tuple[int, LoaderState]:
        engine, state = self.engine, ckpt["trainer_state"]
        engine.load_optimizer(resume, model, opt)
        sched.load_state_dict(state["scheduler"])
        start = state["step"]
        # (another world size: new streams, reproducibly)
        gens.restore(
            state, engine, self.name, self.seed * 1_000_003 + self.index * 7919 + start * 104729 + engine.dp_rank
        )
        if ema and "ema" in ckpt:
            ema.load_state_dict(ckpt["ema"])
        self.task.load_state_dict(state.get("task", {}))
        for companion in self.task.companions():
            companion.load(resume)
        layout = {"dp_size": engine.dp_size, "num_workers": self.cfg.data.num_workers}
        if state["data_layout"] != layout:  # shards are dealt over ranks x workers
            log.warning("[%s] data-parallel size / loader workers changed %s -> %s: the data order after resume "
                        "will differ from an uninterrupted run", self.name, state["data_layout"], layout)  # fmt: skip
        return start, LoaderState.from_dict(state["data"])

    # -- the end of the stage ---------------------------------------------------------------------
    def _finish(self, model, ema, start: int, began: float, loss: float, skipped: Counter) -> StageResult:
        engine, rt = self.engine, self.rt
        self.writer.wait(self.stage.steps)
        self.skips.flush()
        skipped = Counter(self.skips.counts(skipped))  # all ranks' (the summary's skipped_samples)
        seconds = time.perf_counter() - began
        weights, adapters, adapter_meta = self.full_weights(model, adapters=True)
        ema_state = ema.state_dict() if ema else None
        metrics, paths, sheets = {}, [], {}
        eval_began = time.perf_counter()
        rt.place_encoders(engine.device)
        if self.stage.evaluate:
            sample_from = self.sampling_model(model, ema_state, weights)
            if engine.is_main:
                metrics, paths, sheets = self.task.evaluate(sample_from, self.dir.samples)
        eval_seconds = time.perf_counter() - eval_began
        result = StageResult(self.name, self.stage.steps, seconds, loss, metrics, dict(skipped), start, eval_seconds,
                             InitReport.read(self.dir.root))  # fmt: skip
        if engine.is_main:
            meta = self.task.final_metadata()
            self.dir.save_final(weights, ema_state, result.as_dict(), adapters, adapter_meta, meta)
            report_stage_end(self.rt, self.ctx, result, ema_state is not None, paths, sheets, skipped, self.skips.path)
        engine.barrier()
        return result
