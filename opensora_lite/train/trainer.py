"""Train one stage: build the model, take its initial weights, loop, checkpoint, sample.

A stage resumes from its newest complete checkpoint when one exists; otherwise it initialises from
`init` (the previous stage's final weights, a checkpoint path, or nothing) and reports missing and
unexpected keys. The loop is the data flow of docs/design.md: batch -> encoders -> noising -> model
-> loss -> engine step -> EMA -> metrics -> checkpoints.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from opensora_lite.config.schema import StageConfig
from opensora_lite.config.stages import switches_autoencoder
from opensora_lite.config.validate import async_checkpoint_note
from opensora_lite.data.cache import CachedStream, bucket_table, build_cache, cached_shards, stage_seed
from opensora_lite.data.loader import BucketedVideoStream, LoaderState, batches, build_loader, expand_shards
from opensora_lite.diffusion.conditioning import applicable, build_condition, sample_tasks
from opensora_lite.diffusion.objective import drop_text, flow_loss
from opensora_lite.diffusion.pipeline import pixel_frames
from opensora_lite.models.flops import mmdit_flops, peak_tflops
from opensora_lite.models.flux_weights import load_into, read_flux_weights
from opensora_lite.models.lora import load_adapters
from opensora_lite.models.mmdit import MMDiT
from opensora_lite.train.adapters import StageLora
from opensora_lite.train.autoencoder_task import AutoencoderTask
from opensora_lite.train.checkpoint_writer import CheckpointWriter
from opensora_lite.train.ema import EMA
from opensora_lite.train.evaluation import evaluate_stage
from opensora_lite.train.optim import build_optimizer, build_scheduler
from opensora_lite.train.preemption import Preempted
from opensora_lite.train.runtime import Runtime, memory_gib
from opensora_lite.train.skips import SkipList
from opensora_lite.train.stage_init import InitReport, load_stage_weights, stage_init_report
from opensora_lite.train.state import StageDir, resolve_weights_path
from opensora_lite.train.validation import Validator

log = logging.getLogger("opensora_lite")


def uses_image_condition(stage: StageConfig) -> bool:
    """A stage trains I2V (and its model gets cond_in) when any i2v task has weight."""
    return any(w > 0 for task, w in stage.tasks.items() if task != "t2v")


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


class StageTrainer:
    def __init__(self, rt: Runtime, name: str, step_offset: int = 0):
        self.run_cfg = rt.cfg  # the run's; self.cfg is this stage's view (its autoencoder and patch)
        self.rt, self.name, self.step_offset = rt.for_stage(name), name, step_offset
        self.cfg = self.rt.cfg
        rt = self.rt
        self.stage = rt.cfg.curriculum.stages[name]
        self.index = list(rt.cfg.curriculum.stages).index(name)
        self.dir = StageDir(rt.run_dir / name)
        self.engine = rt.engine
        self.peak_tflops = rt.cfg.run.peak_tflops or peak_tflops(rt.device, rt.cfg.run.dtype)
        self.lora = StageLora(self.stage, self.engine, rt.cfg.run.dtype) if self.stage.lora.rank > 0 else None
        # stage.kind=autoencoder: what a step computes and what evaluation measures come from this task;
        # None: the diffusion stage's own (below)
        self.task = (
            AutoencoderTask(self.engine, self.rt.cfg, self.stage, self.index)
            if self.stage.kind == "autoencoder"
            else None
        )

    # -- set-up ----------------------------------------------------------------------------------
    def _init_path(self):
        init = self.stage.init
        if init == "none":
            return None
        if init == "previous":
            return resolve_weights_path(str(self.rt.run_dir / list(self.cfg.curriculum.stages)[self.index - 1]))
        return resolve_weights_path(init)

    def _init_weights(self, model: MMDiT, resume, report: bool = True) -> None:
        """The initial weights (not on resume): from `init`, or the model's own from-scratch values.
        Engines that build on meta (parallel.meta_init) fill each rank's shards themselves.
        A LoRA stage's base weights come from here on resume too (`report=False`: no init event)."""
        path = self._init_path() if resume is None else self.dir.checkpoint_weights(resume)
        if self.engine.builds_on_meta:
            loaded = self.engine.materialize(model, path, self.cfg.run.seed * 1000 + self.index)
            changed: list[str] = []  # (a switching stage does not build on meta: validate.py)
        elif path is None:
            log.info("[%s] initialised from scratch", self.name)
            if self.engine.is_main:
                InitReport(None).save(self.dir.root)
            return
        else:
            state, fmt = read_flux_weights(path)
            switching = resume is None and switches_autoencoder(self.run_cfg, self.name)
            loaded, changed = load_stage_weights(model, state, f"{path} ({fmt})", switching)
        if resume is None and report:
            init = stage_init_report(self.run_cfg, self.name, loaded, changed)
            log.info("[%s] %s", self.name, init.line())
            self.rt.tracker.event(
                "init",
                self.step_offset,
                self.name,
                source=str(path),
                missing=init.missing,
                unexpected=init.unexpected,
                carried=init.carried,
                reinitialised=init.reinitialised,
            )
            if self.engine.is_main:
                init.save(self.dir.root)

    def _init_task_weights(self, model, resume) -> None:
        """An autoencoder stage's weights: the checkpoint's on resume, else `init`'s (none: the
        autoencoder config's own, autoencoder.path or its seeded initialisation)."""
        path = self.dir.checkpoint_weights(resume) if resume else self._init_path()
        if path is None:
            log.info("[%s] autoencoder weights from the autoencoder config", self.name)
            return
        self.task.load_weights(model, path)
        if resume is None:
            log.info("[%s] autoencoder weights from %s", self.name, path)
            self.rt.tracker.event("init", self.step_offset, self.name, source=str(path), missing=[], unexpected=[])

    def _loader(self, resume: LoaderState):
        cfg, engine = self.cfg, self.engine
        stream_cls, shards = BucketedVideoStream, expand_shards(cfg.data.shards)
        if cfg.data.kind == "cached":  # build this stage's latent cache once (all ranks), then read it
            folder = build_cache(
                cfg, self.name, self.image_condition, self.rt.ae, self.rt.text, engine, watch=self.rt.preemption
            )
            stream_cls, shards = CachedStream, cached_shards(folder)
            log.info("[%s] training from the latent cache %s", self.name, folder)
        stream = stream_cls(
            shards,
            bucket_table(cfg, self.stage),
            cfg.data.target_fps,
            seed=stage_seed(cfg, self.index),
            rank=engine.dp_rank,  # ranks of one sequence-parallel group read the same batches
            world_size=engine.dp_size,
            shuffle_buffer=cfg.data.shuffle_buffer,
            decode_threads=cfg.data.decode_threads,
            caption_key=cfg.data.caption_key,
            caption_template=cfg.data.caption_template,
            image_caption_template=cfg.data.image_caption_template,
            resume=resume,
            open_retries=cfg.data.open_retries,
        )
        return batches(
            build_loader(stream, cfg.data.num_workers, cfg.data.prefetch_factor, engine.device.type == "cuda")
        )

    # -- one optimizer step ----------------------------------------------------------------------
    def _micro_step(self, model, batch: dict, gen: torch.Generator, last: bool) -> tuple[torch.Tensor, int, float]:
        """One forward + backward (`last`: the step's final micro-batch); returns the loss, the video tokens
        and the model FLOPs it took."""
        rt = self.rt
        with torch.no_grad():
            if "x0" in batch:  # latent cache: the encoders' outputs, precomputed
                x0, t5, clip = (batch[k].to(rt.device, non_blocking=True).float() for k in ("x0", "t5", "clip"))
            else:
                video = batch["video"].to(rt.device, non_blocking=True)
                x0 = rt.ae.encode(video)
                t5, clip = rt.text.encode(batch["captions"])
            t5, clip = drop_text(t5, clip, rt.text.empty(), self.stage.text_dropout, gen)
            cond = None
            if self.image_condition:
                v2v_k = self.stage.v2v_frames
                tasks = sample_tasks(applicable(self.stage.tasks, x0.shape[2], v2v_k), x0.shape[0], gen)
                if "x0" in batch:
                    head, tail = (batch[k].to(rt.device, non_blocking=True).float() for k in ("head", "tail"))
                    given = x0
                else:
                    head, tail = rt.ae.encode(video[:, :, :1]), rt.ae.encode(video[:, :, -1:])
                    given = self._v2v_latents(tasks, x0, video)
                cond = build_condition(tasks, head, tail, x0.shape[2], given, v2v_k)
        loss = flow_loss(model, x0, t5, clip, cond, self.cfg.flow, self.cfg.model.patch_size, gen, rt.autocast())
        scale = self.engine.sp.loss_scale if self.engine.sp else 1.0  # SP: partial gradients summed, not averaged
        self.engine.backward(model, loss * scale / self.stage.grad_accum, sync=last)
        pt, ph, pw = self.cfg.model.patch_size
        per_sample = (x0.shape[2] // pt) * (x0.shape[3] // ph) * (x0.shape[4] // pw)
        flops = mmdit_flops(self.cfg.model, per_sample, t5.shape[1], self.image_condition).train * x0.shape[0]
        return loss.detach(), x0.shape[0] * per_sample, flops

    def _v2v_latents(self, tasks: list[str], x0: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        """Latents the v2v tasks take their given frames from: the clip's own, except v2v_tail with a
        causal autoencoder, whose last frames are encoded on their own (as inference encodes a reference:
        there the first given latent frame is a single-frame one)."""
        if "v2v_tail" not in tasks or not self.rt.ae.causal:
            return x0
        k = min(self.stage.v2v_frames, x0.shape[2] - 1)
        out = x0.clone()
        out[:, :, -k:] = self.rt.ae.encode(video[:, :, -pixel_frames(self.rt.ae, k) :])[:, :, -k:]
        return out

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> StageResult:
        cfg, stage, engine, rt = self.cfg, self.stage, self.engine, self.rt
        self.image_condition = uses_image_condition(stage)
        torch.manual_seed(cfg.run.seed * 1000 + self.index)  # model init: identical on every rank
        # built on meta (or partitioned), sharded, then each rank fills its shards (the MMDiT only)
        meta = engine.builds_on_meta and self.task is None
        if self.task:
            model = self.task.build_model()
        else:
            with engine.model_context():
                model = MMDiT(cfg.model, image_condition=self.image_condition)
            model.set_sequence_parallel(engine.sp)
        if engine.is_main and (leftovers := self.dir.discard_incomplete()):
            log.warning("[%s] removed incomplete checkpoint folders of an interrupted job: %s", self.name, leftovers)
        resume = self.dir.latest_checkpoint()
        own_weights = meta or self.lora or self.task  # the full weights are read below, not here
        ckpt = self.dir.load_checkpoint(resume, weights=not own_weights) if resume else None
        if self.task:
            self._init_task_weights(model, resume if ckpt else None)
        elif self.lora:  # frozen base from init (also on resume), adapters on top, from the checkpoint if any
            self._init_weights(model, None, report=ckpt is None)
            self.lora.prepare(model, self.name)
            if ckpt:
                load_adapters(model, ckpt["adapters"], str(resume))
        elif ckpt and not meta:
            load_into(model, ckpt["model"], str(resume))
        elif not meta:
            self._init_weights(model, None)
        # (a ZeRO-3 parameter built partitioned holds a placeholder; ds_numel is its full size)
        nparams = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
        model, opt = engine.prepare(
            model, lambda params: build_optimizer(params, stage.optim, engine.device), stage.optim.grad_clip
        )
        if meta:
            self._init_weights(model, resume)
        sched = build_scheduler(opt, stage.optim, stage.steps)
        ema = EMA(engine.unwrap(model), stage.ema_decay) if stage.ema_decay > 0 else None
        gen = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + self.index * 7919 + engine.dp_rank)
        start, data_state = 0, LoaderState()
        if ckpt:
            start, data_state = self._restore(resume, ckpt, model, opt, sched, gen, ema)
        # weights and checkpoint fit: the run directory is this run's now (nothing was written before)
        rt.commit(self.step_offset + start if ckpt else None)
        if ckpt:
            log.info("[%s] resumed from %s (step %d)", self.name, resume, start)
            rt.tracker.event("resume", self.step_offset + start, self.name, from_step=start, checkpoint=str(resume))
        log.info(
            "[%s] %s: %d steps, %.2fM parameters, image condition %s",
            self.name,
            stage.description or "stage",
            stage.steps,
            nparams / 1e6,
            self.image_condition,
        )
        self.writer = CheckpointWriter(
            engine,
            self.dir,
            stage.keep_checkpoints,
            stage.async_checkpoint and not self.lora,
            lambda metrics, at: rt.tracker.log(metrics, self.step_offset + at, self.name),
            self.lora.save if self.lora else None,
        )
        if engine.is_main and (note := async_checkpoint_note(cfg, stage)):
            log.info("[%s] %s", self.name, note)
        data = self._loader(data_state)
        self.skips = SkipList(self.dir.root, engine, start)  # <stage>/skipped.tsv
        validator = Validator(self)
        if cfg.data.kind == "cached":
            rt.text.empty()  # kept where training runs (CFG dropout) while the encoders are parked
            rt.place_encoders("cpu")  # the cache holds their outputs: free the device until sampling
        model.train()
        skipped: Counter = Counter()
        show_bar = engine.is_main and cfg.logger.progress_bar and sys.stderr.isatty()
        bar = tqdm(total=stage.steps, initial=start, desc=self.name, disable=not show_bar, dynamic_ncols=True)
        window = {"loss": 0.0, "n": 0, "tokens": 0, "samples": 0, "flops": 0.0, "wait": 0.0, "t0": time.perf_counter()}
        began, loss_value = time.perf_counter(), float("nan")
        for step in range(start, stage.steps):
            for micro in range(stage.grad_accum):
                t_wait = time.perf_counter()
                batch = next(data)
                window["wait"] += time.perf_counter() - t_wait
                data_state.batches += 1
                data_state.failed.extend(batch["failed"])
                skipped.update(batch["skipped"])
                self.skips.add(step + 1, batch.get("skipped_rows", ()))
                last = micro == stage.grad_accum - 1
                if self.task:
                    loss, tokens, flops = self.task.micro_step(model, batch, gen, step, last)
                else:
                    loss, tokens, flops = self._micro_step(model, batch, gen, last=last)
                window["flops"] += flops
                window["loss"] += float(loss) / stage.grad_accum
                window["tokens"] += tokens
                window["samples"] += len(batch["captions"])
            grad_norm = engine.step(model, opt)
            if self.task:
                self.task.after_step(step)
            sched.step()
            if ema:
                ema.update(engine.unwrap(model))
            window["n"] += 1
            done = step + 1
            if done % stage.log_every == 0 or done == stage.steps:
                loss_value = self._log(window, done, grad_norm, opt.param_groups[0]["lr"], bar)
            bar.update(1)
            if validator.due(done):
                validator.run(model, ema, done)
            saved = stage.checkpoint_every and done % stage.checkpoint_every == 0 and done < stage.steps
            if saved:
                self._checkpoint(model, opt, sched, gen, ema, done, data_state)
            signame = rt.preemption.should_stop(engine.world_size, engine.device) if done < stage.steps else None
            if signame:  # every rank stops here: checkpoint, then the entry point requeues
                if not saved:
                    self._checkpoint(model, opt, sched, gen, ema, done, data_state)
                self.writer.wait(done)
                bar.close()
                rt.tracker.event("preempted", self.step_offset + done, self.name, at_step=done, signal=signame)
                raise Preempted(self.name, done, signame)
        bar.close()
        return self._finish(model, ema, start, began, loss_value, skipped)

    def _log(self, w: dict, step: int, grad_norm: float, lr: float, bar) -> float:
        engine = self.engine
        elapsed = time.perf_counter() - w["t0"]
        # the slowest rank's data wait and the largest memory: what stalls a job or runs it out of memory
        worst = {"data_wait_s": w["wait"] / w["n"], "data_stall_frac": w["wait"] / elapsed, **memory_gib(engine.device)}
        worst = dict(zip(worst, engine.all_reduce_floats(list(worst.values()), "max")))
        metrics = {
            "loss": engine.all_reduce_mean(w["loss"] / w["n"]),
            "lr": lr,
            "grad_norm": grad_norm,
            "samples_per_s": w["samples"] * engine.dp_size / elapsed,
            "tokens_per_s": w["tokens"] * engine.dp_size / elapsed,
            "step_time_s": elapsed / w["n"],
            # model FLOPs per device (an SP group shares each sample; recomputation not counted)
            "tflops_per_device": w["flops"] / engine.cfg.sp_size / elapsed / 1e12,
            **worst,
            **(self.task.take_metrics() if self.task else {}),
            "step": step,
        }
        if self.peak_tflops and w["flops"]:  # (an autoencoder stage's FLOPs are not counted)
            metrics["mfu"] = metrics["tflops_per_device"] / self.peak_tflops
        self.rt.tracker.log(metrics, self.step_offset + step, self.name)
        if bar.disable and self.engine.is_main and self.cfg.logger.console:
            mfu = f" MFU {metrics['mfu']:.1%}" if "mfu" in metrics else ""
            log.info(
                "[%s] step %d/%d loss %.4f lr %.2e grad %.3f %.1f samples/s %.3g TFLOP/s/device%s "
                "data wait %.3fs mem %.2f GiB",
                self.name,
                step,
                self.stage.steps,
                metrics["loss"],
                lr,
                grad_norm,
                metrics["samples_per_s"],
                metrics["tflops_per_device"],
                mfu,
                metrics["data_wait_s"],
                metrics.get("gpu_mem_peak_gib", metrics["host_rss_gib"]),
            )
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{lr:.1e}", sps=f"{metrics['samples_per_s']:.1f}")
        w.update(loss=0.0, n=0, tokens=0, samples=0, flops=0.0, wait=0.0, t0=time.perf_counter())
        if engine.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(engine.device)  # the next window's peak
        return metrics["loss"]

    def _checkpoint(self, model, opt, sched, gen, ema, step: int, data_state: LoaderState) -> None:
        """Every rank writes its part (weights, optimizer), rank 0 the trainer state; see checkpoint_writer."""
        engine = self.engine
        self.skips.flush()  # the skips up to this step: a resume from here lists the later ones again

        def trainer_state() -> dict | None:
            failed = [key for rank in engine.all_gather_object(data_state.failed) for key in rank]
            generators = engine.all_gather_object(gen.get_state())
            return {
                "step": step,
                "data": LoaderState(data_state.batches, failed).as_dict(),
                "data_layout": {"dp_size": engine.dp_size, "num_workers": self.cfg.data.num_workers},
                "scheduler": sched.state_dict(),
                "generators": generators,  # one per rank
                **({"task": self.task.state_dict()} if self.task else {}),  # the discriminator's
            }

        self.writer.save(step, model, opt, ema, trainer_state)

    def full_weights(self, model, adapters: bool = False):
        """The model's full fp32 weights in BFL names on rank 0 (every rank calls it); a LoRA model's
        merged. With `adapters`: (weights, the stored adapters or None)."""
        weights, stored = self.engine.full_state_dict(model), None
        if self.lora:
            weights, stored = self.lora.split(model, weights)
        return (weights, stored) if adapters else weights

    def _eval_model(self, model, weights: dict, copy: bool = False) -> MMDiT:
        """The model to sample from on rank 0: the trained one, or a local copy of `weights` where it is
        sharded or `copy` is set (the EMA weights)."""
        plain = self.engine.unwrap(model)
        if self.engine.sp is None and not self.engine.shards_parameters and not copy:
            return plain
        if self.task:
            return self.task.copy_model(weights)
        local = MMDiT(self.cfg.model, image_condition=self.image_condition)
        load_into(local, weights, "gathered weights")
        return local.to(self.engine.device)

    def _restore(self, resume, ckpt: dict, model, opt, sched, gen, ema) -> tuple[int, LoaderState]:
        engine, state = self.engine, ckpt["trainer_state"]
        engine.load_optimizer(resume, model, opt)
        sched.load_state_dict(state["scheduler"])
        generators = state.get("generators") or [state.get("generator")]
        start = state["step"]
        if len(generators) == engine.world_size:
            gen.set_state(generators[engine.rank])
        else:  # another world size: per-rank noise streams cannot continue; start new ones, reproducibly
            gen.manual_seed(self.cfg.run.seed * 1_000_003 + self.index * 7919 + start * 104729 + engine.dp_rank)
            log.warning(
                "[%s] resumed on %d ranks from %d: new noise streams", self.name, engine.world_size, len(generators)
            )
        if ema and "ema" in ckpt:
            ema.load_state_dict(ckpt["ema"])
        if self.task:
            self.task.load_state_dict(state.get("task", {}))
        data = LoaderState.from_dict(state.get("data", {"batches": state.get("batches", 0)}))
        layout = {"dp_size": engine.dp_size, "num_workers": self.cfg.data.num_workers}
        if state.get("data_layout", layout) != layout:  # shards are dealt over ranks x workers
            log.warning(
                "[%s] data-parallel size / loader workers changed %s -> %s: the data order after resume will "
                "differ from an uninterrupted run",
                self.name,
                state["data_layout"],
                layout,
            )
        return start, data

    def _finish(self, model, ema, start: int, began: float, loss: float, skipped: Counter) -> StageResult:
        engine, rt = self.engine, self.rt
        self.writer.wait(self.stage.steps)
        self.skips.flush()
        skipped = Counter(self.skips.counts(skipped))  # all ranks' (the summary's skipped_samples)
        seconds = time.perf_counter() - began
        weights, adapters = self.full_weights(model, adapters=True)
        ema_state = ema.state_dict() if ema else None
        metrics, paths, sheets = {}, [], {}
        eval_began = time.perf_counter()
        rt.place_encoders(engine.device)
        if self.stage.evaluate and engine.is_main:
            eval_model = self._eval_model(model, weights if ema_state is None else ema_state, ema_state is not None)
            if self.task:
                metrics, paths, sheets = self.task.evaluate(rt, eval_model, self.dir.samples)
            else:
                metrics, paths, sheets = evaluate_stage(rt, eval_model, self.stage, self.dir.samples)
        eval_seconds = time.perf_counter() - eval_began
        result = StageResult(
            self.name,
            self.stage.steps,
            seconds,
            loss,
            metrics,
            dict(skipped),
            start,
            eval_seconds,
            InitReport.read(self.dir.root),
        )
        if engine.is_main:
            self.dir.save_final(weights, ema_state, result.as_dict(), adapters, self.lora and self.lora.metadata)
            end = self.step_offset + self.stage.steps
            rt.tracker.event(
                "stage_end",
                end,
                self.name,
                seconds=seconds,
                eval_seconds=eval_seconds,
                eval_ema=ema_state is not None,
                final_loss=loss,
                **metrics,
            )
            if self.stage.validate_every and self.stage.evaluate:  # the validation curve's last point
                scalars = {f"val/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}
                rt.tracker.log({**scalars, "val/seconds": eval_seconds, "step": self.stage.steps}, end, self.name)
            rt.tracker.videos(paths, end, self.name)
            rt.tracker.images(sheets, end, self.name)
            for kind, sheet in sheets.items():
                log.info("[%s] contact sheet (%s): %s", self.name, kind, sheet)
            if skipped:
                log.info("[%s] skipped samples: %s (listed in %s)", self.name, dict(skipped), self.skips.path)
            log.info(
                "[%s] done: trained in %.0fs, evaluated in %.0fs, final loss %.4f %s",
                self.name,
                seconds,
                eval_seconds,
                loss,
                _fmt(metrics),
            )
        engine.barrier()
        return result


def _fmt(metrics: dict) -> str:
    scalars = {k: v for k, v in metrics.items() if not isinstance(v, dict)}  # tables go to the final report
    return " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in scalars.items())
