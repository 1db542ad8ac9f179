"""How a stage's model gets its values, and what of it a checkpoint and the final folder hold: one
component with three forms, chosen once, so the loop never branches on LoRA or meta-device starts.

- `StageWeights`: the model is built whole; the initial weights come from the stage's `init` (or the
  from-scratch init), a resume's from its newest checkpoint (the task reads either form).
- `MetaStart` (parallel.meta_init on an engine that builds sharded): the model is built on meta,
  sharded by prepare(), then the engine fills each rank's shards (the task's materialize).
- `LoraWeights` (stage.lora.rank > 0): the frozen base comes from `init` on every start, resumed or not;
  the adapters (and the tensors trained beside them) from the checkpoint; checkpoints hold only those;
  the final folder holds the merged model and the adapters beside it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from opensora_lite.checkpoint.stage import StageCheckpoints, resolve_weights_path
from opensora_lite.layout import StageDir
from opensora_lite.train.tasks.base import StageContext, Task


def init_path(ctx: StageContext) -> Path | None:
    """The stage's initial weights: the previous stage's final ones, a path, or none."""
    init = ctx.stage.init
    if init == "none":
        return None
    if init == "previous":
        previous = list(ctx.cfg.curriculum.stages)[ctx.index - 1]
        return resolve_weights_path(str(ctx.rt.stage_dir(previous)))
    return resolve_weights_path(init)


class StageWeights:
    on_meta = False  # the model is built on the meta device (inside the engine's model context)
    asynchronous = True  # checkpoints may be written in the background

    def __init__(self, ctx: StageContext, task: Task, stage_dir: StageCheckpoints):
        self.ctx, self.task, self.dir = ctx, task, stage_dir

    def init_path(self) -> Path | None:
        return init_path(self.ctx)

    def before_prepare(self, model: nn.Module, resume: Path | None, ckpt: dict | None) -> None:
        """Values for the model built whole: a resume's checkpoint, else the stage's init."""
        if resume is not None:
            self.task.load_weights(model, StageDir.checkpoint_weights(resume), initial=False)
        else:
            self.task.load_weights(model, self.init_path(), initial=True)

    def after_prepare(self, model: nn.Module, resume: Path | None) -> None:
        """Values for a model the engine built sharded (MetaStart only)."""

    def save_model(self):
        """What writes a checkpoint's weights (None: the engine's full weights or shards)."""
        return None

    def final(self, model, full: dict[str, torch.Tensor]) -> tuple[dict, dict | None, dict | None]:
        """(final weights, stored adapters, their metadata) from the gathered full state."""
        return full, None, None


class MetaStart(StageWeights):
    on_meta = True

    def before_prepare(self, model, resume, ckpt) -> None:
        return None

    def after_prepare(self, model, resume) -> None:
        if resume is not None:
            self.task.materialize(model, StageDir.checkpoint_weights(resume), initial=False)
        else:
            self.task.materialize(model, self.init_path(), initial=True)


class LoraWeights(StageWeights):
    asynchronous = False  # adapters are written by rank 0 from gathered tensors

    def __init__(self, ctx: StageContext, task: Task, stage_dir: StageCheckpoints):
        from opensora_lite.train.adapters import StageLora

        super().__init__(ctx, task, stage_dir)
        self.lora = StageLora(ctx.stage, ctx.engine, ctx.cfg.run.dtype, task.spec)

    def before_prepare(self, model, resume, ckpt) -> None:
        from opensora_lite.models.lora import load_adapters

        self.task.load_weights(model, self.init_path(), initial=ckpt is None)  # the frozen base, every start
        self.lora.prepare(model, self.ctx.name)
        if ckpt is not None:
            load_adapters(model, ckpt["adapters"], str(resume))

    def save_model(self):
        return self.lora.save

    def final(self, model, full):
        weights, adapters = self.lora.split(model, full)
        return weights, adapters, self.lora.metadata


def stage_weights(ctx: StageContext, task: Task, stage_dir: StageCheckpoints) -> StageWeights:
    """The form this stage's weights take (see the module's docstring)."""
    if ctx.stage.lora.rank > 0:
        return LoraWeights(ctx, task, stage_dir)
    if ctx.engine.builds_on_meta and task.builds_on_meta:
        return MetaStart(ctx, task, stage_dir)
    return StageWeights(ctx, task, stage_dir)
