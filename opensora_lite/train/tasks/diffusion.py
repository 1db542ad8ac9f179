"""A diffusion stage (stage.kind=diffusion): the rectified-flow objective on a model family.

A step encodes the batch (or reads the latent cache), drops text for CFG, builds the I2V/v2v condition
of the stage's task mix, and takes the flow loss of the model through its spec's forward. The model
comes from its family's spec (models/spec.py); initial weights carry across a change of autoencoder
(train/stage_init.py); the evaluation samples the Shapes probes (train/evaluation.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from opensora_lite.config.stages import switches_autoencoder
from opensora_lite.data.loader import frames_on_device
from opensora_lite.diffusion.conditioning import applicable, build_condition, sample_tasks, uses_image_condition
from opensora_lite.diffusion.objective import drop_text, flow_loss
from opensora_lite.diffusion.pipeline import pixel_frames
from opensora_lite.models.loading import load_into
from opensora_lite.models.spec import spec_for
from opensora_lite.train.evaluation import evaluate_stage, held_out_loss
from opensora_lite.train.stage_init import InitReport, load_stage_weights, stage_init_report
from opensora_lite.train.tasks.base import StageContext, Task

log = logging.getLogger("opensora_lite")


class DiffusionTask(Task):
    kind = "diffusion"

    def __init__(self, ctx: StageContext):
        super().__init__(ctx)
        self.spec = spec_for(ctx.cfg.model)
        self.image_condition = uses_image_condition(ctx.stage.tasks)
        self.builds_on_meta = self.spec.capabilities.meta_init

    # -- the model -----------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        model = self.spec.build(self.ctx.cfg.model, image_condition=self.image_condition)
        if self.spec.capabilities.sequence_parallel:
            self.spec.set_sequence_parallel(model, self.ctx.engine.sp)
        return model

    def blocks(self, model: nn.Module) -> dict[str, nn.ModuleList]:
        return self.spec.blocks(model)

    def load_weights(self, model: nn.Module, path: Path | None, initial: bool) -> None:
        ctx = self.ctx
        if path is None:
            log.info("[%s] initialised from scratch", ctx.name)
            if ctx.engine.is_main:
                InitReport(None).save(ctx.rt.stage_dir(ctx.name))
            return
        state, fmt = self.spec.read_weights(path)
        switching = initial and switches_autoencoder(ctx.run_cfg, ctx.name)
        loaded, changed = load_stage_weights(model, state, f"{path} ({fmt})", switching, self.spec)
        if initial:
            self.report_init(path, loaded, changed)

    def materialize(self, model: nn.Module, path: Path | None, initial: bool) -> None:
        seed = self.ctx.cfg.run.seed * 1000 + self.ctx.index
        loaded = self.ctx.engine.materialize(model, self.spec, path, seed)
        if initial:  # (a stage that switches autoencoder does not build on meta: config/validate.py)
            self.report_init(path, loaded, [])

    def report_init(self, path, loaded, changed: list[str]) -> None:
        """The init event, log line and init.json of a stage's first start."""
        ctx = self.ctx
        init = stage_init_report(ctx.run_cfg, ctx.name, loaded, changed)
        log.info("[%s] %s", ctx.name, init.line())
        fields = dict(missing=init.missing, unexpected=init.unexpected, carried=init.carried)
        ctx.rt.tracker.event(
            "init", ctx.step_offset, ctx.name, source=str(path), reinitialised=init.reinitialised, **fields
        )
        if ctx.engine.is_main:
            init.save(ctx.rt.stage_dir(ctx.name))

    def eval_model(self, weights: dict[str, torch.Tensor]) -> nn.Module:
        local = self.spec.build(self.ctx.cfg.model, image_condition=self.image_condition)
        load_into(local, weights, "gathered weights", self.spec.optional_keys())
        return local.to(self.ctx.engine.device)

    def final_metadata(self) -> dict[str, str]:
        return dict(self.spec.weights_metadata)

    # -- a step --------------------------------------------------------------------------------------
    @torch.no_grad()
    def inputs(self, batch: dict, gen: torch.Generator, text_dropout: bool = True):
        """(x0, t5, clip, cond) of a batch: the latents (encoded, or the cache's), the text (dropped for CFG
        at the stage's rates), the I2V/v2v condition of its sampled tasks (None without one)."""
        rt = self.ctx.rt
        if "x0" in batch:  # latent cache: the encoders' outputs, precomputed
            x0, t5, clip = (batch[k].to(rt.device, non_blocking=True).float() for k in ("x0", "t5", "clip"))
        else:
            video = frames_on_device(batch["video"], rt.device)
            # a VAE's posterior draw comes from the stage's generator (checkpointed: resume stays exact)
            x0 = rt.ae.encode(video, generator=gen)
            t5, clip = rt.text.encode(batch["captions"])
        if text_dropout:
            t5, clip = drop_text(t5, clip, rt.text.empty(), self.ctx.stage.text_dropout, gen)
        cond = self._condition(batch, x0, None if "x0" in batch else video, gen) if self.image_condition else None
        return x0, t5, clip, cond

    def tokens_and_flops(self, x0: torch.Tensor, text_tokens: int):
        """(video tokens per sample, the spec's FLOP count of one sample)."""
        patch = self.spec.patch_size(self.ctx.cfg.model)
        per_sample = (x0.shape[2] // patch[0]) * (x0.shape[3] // patch[1]) * (x0.shape[4] // patch[2])
        return per_sample, self.spec.flops(self.ctx.cfg.model, per_sample, text_tokens, self.image_condition)

    def micro_step(self, model, batch: dict, gen: torch.Generator, step: int, last: bool, device_gen=None):
        rt, stage, engine = self.ctx.rt, self.ctx.stage, self.ctx.engine
        x0, t5, clip, cond = self.inputs(batch, gen)
        patch = self.spec.patch_size(self.ctx.cfg.model)

        def forward(xt, t, t5, clip, cond=None):
            return self.spec.forward(model, xt, t, t5, clip, cond)

        loss = flow_loss(forward, x0, t5, clip, cond, self.ctx.cfg.flow, patch, gen, rt.autocast(), device_gen)
        scale = engine.sp.loss_scale if engine.sp else 1.0  # SP: partial gradients summed, not averaged
        engine.backward(model, loss * scale / stage.grad_accum, sync=last)
        per_sample, flops = self.tokens_and_flops(x0, t5.shape[1])
        return loss.detach(), x0.shape[0] * per_sample, flops.train * x0.shape[0]

    def _condition(self, batch: dict, x0: torch.Tensor, video: torch.Tensor | None, gen: torch.Generator):
        """The I2V / v2v condition of this batch's sampled tasks (the cache holds the encoded end frames)."""
        rt, stage = self.ctx.rt, self.ctx.stage
        v2v_k = stage.v2v_frames
        tasks = sample_tasks(applicable(stage.tasks, x0.shape[2], v2v_k), x0.shape[0], gen)
        if video is None:
            head, tail = (batch[k].to(rt.device, non_blocking=True).float() for k in ("head", "tail"))
            given = x0
        else:
            head, tail = rt.ae.encode(video[:, :, :1], generator=gen), rt.ae.encode(video[:, :, -1:], generator=gen)
            given = self._v2v_latents(tasks, x0, video, gen)
        return build_condition(tasks, head, tail, x0.shape[2], given, v2v_k)

    def _v2v_latents(self, tasks: list[str], x0: torch.Tensor, video: torch.Tensor, gen) -> torch.Tensor:
        """Latents the v2v tasks take their given frames from: the clip's own, except v2v_tail with a
        causal autoencoder, whose last frames are encoded on their own (as inference encodes a reference:
        there the first given latent frame is a single-frame one)."""
        ae = self.ctx.rt.ae
        if "v2v_tail" not in tasks or not ae.causal:
            return x0
        k = min(self.ctx.stage.v2v_frames, x0.shape[2] - 1)
        out = x0.clone()
        out[:, :, -k:] = ae.encode(video[:, :, -pixel_frames(ae, k) :], generator=gen)[:, :, -k:]
        return out

    # -- evaluation ----------------------------------------------------------------------------------
    # the stage's sampling and scoring; a task that samples more than video names its own
    evaluate_stage = staticmethod(evaluate_stage)

    def evaluate(self, model: nn.Module, folder: Path, validation: bool = False) -> tuple[dict, list, dict]:
        rt = self.ctx.rt
        metrics, paths, sheets = self.evaluate_stage(rt, model, self.ctx.stage, folder)
        if validation and rt.cfg.eval.val_shards:
            metrics.update(held_out_loss(rt, model, self.ctx.stage, rt.cfg.run.seed))
        return metrics, paths, sheets
