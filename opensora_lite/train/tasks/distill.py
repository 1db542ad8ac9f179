"""A distill stage (stage.kind=distill): a few-step student of a trained model, by DMD2
(diffusion/distill.py, docs/distillation.md).

The loop's model is the student: built by the family's spec, started from the stage's init weights (the
teacher's), trained, EMA'd, checkpointed, sharded and LoRA-wrapped like any diffusion stage's model. Beside
it the task keeps two models of the same architecture:

- the teacher, frozen: the weights of `stage.distill.teacher`, or the stage's init when unset;
- the critic (DMD's fake score), started from the teacher and trained by the flow objective on the
  student's samples, `critic_steps` updates per student update, with its own AdamW.

Both are placed by the engine (Engine.shard_companion): sharded block by block like the student under
fsdp2 (each rank holds 1/N of them: what lets an 11B teacher and critic fit beside the student), replicated
whole elsewhere. The critic is a Companion (companion.py: FSDP reduces its gradients, or one all-reduce
where it is replicated); it and its optimizer state are a DCP folder of each mid-stage checkpoint
(`critic_dcp/`, every rank its shards), so a resume continues bitwise.

A step: encode the batch (the real latents give the I2V condition's reference frames and the shapes the
student generates), pick the student's step k of its schedule, make its input x_{t_k} (by running the
student from noise for k steps, DMD2's backward simulation, or by noising the real latents), take its
clean-latent prediction, the DMD loss through the engine, then the critic's updates on that prediction.
Every draw comes from the stage's generators: the same on a resume.

The student samples on its own schedule: config/stages.py's stage_config gives a distill stage's
sampling `distill.steps` Euler steps without guidance, for its evaluation and for osl-sample on its
weights.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from torch import nn

from opensora_lite.checkpoint.stage import resolve_weights_path
from opensora_lite.diffusion import flow
from opensora_lite.diffusion.distill import critic_loss, dmd_loss, predict_x0, step_flops
from opensora_lite.diffusion.guidance import Guidance
from opensora_lite.diffusion.objective import tokens_per_frame
from opensora_lite.diffusion.sampler import guidance_branches
from opensora_lite.models.loading import load_into
from opensora_lite.train.tasks.base import Figures, StageContext
from opensora_lite.train.tasks.companion import Companion
from opensora_lite.train.tasks.diffusion import DiffusionTask
from opensora_lite.train.weights import init_path

log = logging.getLogger("opensora_lite")


class DistillTask(DiffusionTask):
    kind = "distill"

    def __init__(self, ctx: StageContext):
        super().__init__(ctx)
        self.builds_on_meta = False  # the teacher and critic are built whole: so is the student
        self.d = d = ctx.stage.distill
        run_sample = ctx.run_cfg.sample  # the run's guidance (the stage's own view samples without it)
        self.guidance = Guidance(
            text_scale=run_sample.cfg_scale if d.cfg_scale is None else d.cfg_scale,
            image_scale=run_sample.image_cfg_scale if d.image_cfg_scale is None else d.image_cfg_scale,
        )
        self.teacher = self.critic = self.companion = None
        self.figures = Figures()

    # -- the teacher and the critic ------------------------------------------------------------------
    def teacher_path(self) -> Path:
        return resolve_weights_path(self.d.teacher) if self.d.teacher else init_path(self.ctx)

    def build_model(self) -> nn.Module:
        """The student (the family's model; its weights come from the loop's weights component), and
        beside it the frozen teacher and the trainable critic, both holding the teacher's weights."""
        student = super().build_model()
        if self.teacher is None:
            self._build_teacher_and_critic()
        return student

    def _build_teacher_and_critic(self) -> None:
        ctx, engine = self.ctx, self.ctx.engine
        path = self.teacher_path()
        with torch.random.fork_rng(devices=[]):  # their throwaway init leaves the student's unchanged
            teacher = self.spec.build(ctx.cfg.model, image_condition=self.image_condition)
        state, fmt = self.spec.read_weights(path)
        report = load_into(teacher, state, f"{path} ({fmt})", self.spec.optional_keys())
        if ctx.engine.is_main:
            log.info("[%s] teacher %s: %s", ctx.name, path, report.summary())
        critic = copy.deepcopy(teacher)
        self.teacher = engine.shard_companion(teacher.eval().requires_grad_(False), self.spec.blocks(teacher))
        self.critic = engine.shard_companion(critic.train().requires_grad_(True), self.spec.blocks(critic))
        o = ctx.stage.optim
        lr = o.lr if self.d.critic_lr is None else self.d.critic_lr
        self.companion = Companion("critic", self.critic, lr, o.betas, o.eps, o.grad_clip)
        if engine.is_main:
            placed = f"sharded over {engine.world_size} rank(s)" if self.companion.sharded else "replicated"
            log.info("[%s] teacher and critic: %s", ctx.name, placed)

    def _velocity(self, model: nn.Module):
        return lambda x, t, t5, clip, cond=None: self.spec.forward(model, x, t, t5, clip, cond)

    # -- a step --------------------------------------------------------------------------------------
    def micro_step(self, model, batch: dict, gen: torch.Generator, step: int, last: bool, device_gen=None):
        ctx, d = self.ctx, self.d
        rt, stage, engine, fcfg = ctx.rt, ctx.stage, ctx.engine, ctx.cfg.flow
        x0, t5, clip, cond = self.inputs(batch, gen, text_dropout=False)  # the student always reads the prompt
        device = x0.device
        noise_gen = device_gen or gen

        def randn(shape) -> torch.Tensor:
            return torch.randn(shape, generator=noise_gen, device=noise_gen.device).to(device)

        per_frame, frames = tokens_per_frame(x0, self.spec.patch_size(ctx.cfg.model))
        times = flow.sampling_schedule(fcfg, d.steps, per_frame, frames).tolist()  # the student's, 1 -> 0
        k = int(torch.randint(d.steps, (), generator=gen))  # which of its steps this micro-batch trains
        b = x0.shape[0]
        student = self._velocity(model)
        t_k = torch.full((b,), times[k], device=device)
        with torch.no_grad():
            if d.backward_simulation:  # its own first k steps from noise, as it samples
                x = randn(x0.shape)
                for j in range(k):
                    tj = torch.full((b,), times[j], device=device)
                    with rt.autocast():
                        v = student(x, tj, t5, clip, cond).float()
                    x = flow.euler_step(x, v, times[j], times[j + 1])
            else:
                x = flow.add_noise(x0, randn(x0.shape), t_k, fcfg.sigma_min)
        with rt.autocast():
            v = student(x, t_k, t5, clip, cond).float()
        x0_hat = predict_x0(x, v, t_k, fcfg.sigma_min)
        tau = d.t_min + (d.t_max - d.t_min) * torch.rand(b, generator=gen).to(device)
        loss, figures = dmd_loss(
            x0_hat, self._velocity(self.teacher), self._velocity(self.critic), t5, clip, rt.text.empty(),
            self.guidance, cond, tau, randn(x0.shape), fcfg.sigma_min, rt.autocast(),
        )  # fmt: skip
        engine.backward(model, loss / stage.grad_accum, sync=last)
        figures["critic_loss"] = self._train_critic(x0_hat.detach(), t5, clip, cond, gen, randn)
        figures["dmd_loss"] = float(loss.detach())
        self.figures.add(figures, 1 / stage.grad_accum)
        per_sample, flops = self.tokens_and_flops(x0, t5.shape[1])
        branches = guidance_branches(self.guidance, cond is not None and bool(cond[:, 0].any()))
        work = step_flops(flops.forward, flops.train, k * d.backward_simulation, branches, d.critic_steps)
        return loss.detach(), b * per_sample, work * b

    def _train_critic(self, x0: torch.Tensor, t5, clip, cond, gen: torch.Generator, randn) -> float:
        """`critic_steps` updates of the fake score on the student's samples `x0`, each at fresh flow times
        and noise; the gradients averaged over ranks. Returns the mean loss."""
        ctx, fcfg, engine = self.ctx, self.ctx.cfg.flow, self.ctx.engine
        per_frame, frames = tokens_per_frame(x0, self.spec.patch_size(ctx.cfg.model))
        total = 0.0
        for _ in range(self.d.critic_steps):
            t = flow.sample_timesteps(fcfg, x0.shape[0], per_frame, frames, gen).to(x0.device)
            loss = critic_loss(self._velocity(self.critic), x0, t5, clip, cond, t, randn(x0.shape), fcfg.sigma_min,
                               ctx.rt.autocast())  # fmt: skip
            loss.backward()
            self.companion.step(engine.world_size)
            total += float(loss.detach())
        return total / self.d.critic_steps

    def take_metrics(self) -> dict[str, float]:
        """DMD's loss and gaps and the critic's loss since the last call, averaged over steps and ranks."""
        return self.figures.take(self.ctx.engine)

    def final_metadata(self) -> dict[str, str]:
        return {**super().final_metadata(), "distill_method": self.d.method, "student_steps": str(self.d.steps)}

    # -- checkpoint state beyond the student ------------------------------------------------------------
    def companions(self) -> list:
        return [self.companion]
