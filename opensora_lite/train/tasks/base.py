"""The task interface: what the loop asks of a kind of stage."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger("opensora_lite")


@dataclass
class StageContext:
    """What a task may use: the stage's runtime view (config, engine, encoders, tracker), its settings,
    its place in the curriculum and its folders."""

    rt: Any  # train/runtime.py Runtime, as this stage sees it
    name: str
    index: int
    step_offset: int
    run_cfg: Any  # the run's config (a stage's view may change its autoencoder and patch)

    @property
    def cfg(self):
        return self.rt.cfg

    @property
    def stage(self):
        return self.rt.cfg.curriculum.stages[self.name]

    @property
    def engine(self):
        return self.rt.engine


class Figures:
    """A task's own figures between two log steps: added per micro-batch (weighted 1/grad_accum, so one
    step counts once), taken as their means over the steps and the ranks."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.steps = 0.0

    def add(self, figures: dict[str, float], weight: float) -> None:
        for k, v in figures.items():
            self.sums[k] = self.sums.get(k, 0.0) + v * weight
        self.steps += weight

    def take(self, engine) -> dict[str, float]:
        keys = sorted(self.sums)
        values = engine.all_reduce_floats([self.sums[k] / max(self.steps, 1e-12) for k in keys], "mean") if keys else []
        self.sums, self.steps = {}, 0.0
        return dict(zip(keys, values))


class Task(ABC):
    """One kind of stage. The loop calls, in order: build_model, (weights through train/weights.py:
    load_weights or materialize), blocks (for the engine), then per step micro_step x grad_accum,
    after_step, take_metrics at log time; state_dict/load_state_dict at checkpoints; eval_model and
    evaluate for validation and the end of the stage."""

    kind: str
    builds_on_meta = False  # may be built on the meta device and filled by the engine (parallel.meta_init)
    image_condition = False  # the model takes an I2V condition (a latent cache then keeps the end frames)

    def __init__(self, ctx: StageContext):
        self.ctx = ctx

    # -- the model -----------------------------------------------------------------------------------
    @abstractmethod
    def build_model(self) -> nn.Module:
        """The stage's model, from-scratch initialised (inside the engine's model context where it
        builds on meta)."""

    def blocks(self, model: nn.Module) -> dict[str, nn.ModuleList]:
        """Repeated blocks for the engine (per-block sharding, activation checkpointing, compile)."""
        return {}

    @abstractmethod
    def load_weights(self, model: nn.Module, path: Path | None, initial: bool) -> None:
        """Values from `path` (a checkpoint's weights, or the stage's init; None: keep the from-scratch
        ones). `initial`: the stage's start (report what was loaded), not a resume."""

    def materialize(self, model: nn.Module, path: Path | None, initial: bool) -> None:
        """Values for a model built on meta and sharded (tasks with builds_on_meta)."""
        raise NotImplementedError

    def eval_model(self, weights: dict[str, torch.Tensor]) -> nn.Module:
        """A local model holding `weights` (gathered, or the EMA's), for sampling on rank 0."""
        raise NotImplementedError

    def final_metadata(self) -> dict[str, str]:
        """Metadata of the stage's final weights file."""
        return {"format": "pt"}

    # -- a step --------------------------------------------------------------------------------------
    @abstractmethod
    def micro_step(
        self, model, batch: dict, gen: torch.Generator, step: int, last: bool, device_gen: torch.Generator | None = None
    ) -> tuple[torch.Tensor, int, float]:
        """One forward + backward (through the engine) of a micro-batch; `step` 0-based, `last`: the
        step's final micro-batch; `gen` draws on the host, `device_gen` on the training device (the
        flow noise; `gen` itself on a CPU: train/generators.py). Returns the loss, the tokens (or pixels)
        it took and its model FLOPs."""

    def after_step(self, step: int) -> None:
        """After the engine's optimizer step (a task's own update, e.g. a discriminator's); none here."""
        return None

    def take_metrics(self) -> dict[str, float]:
        """The task's own metrics since the last call (logged beside the loop's)."""
        return {}

    # -- checkpoint state beyond the model -----------------------------------------------------------
    def state_dict(self) -> dict:
        """Small state for the trainer state's JSON; models go in companions()."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None

    def companions(self) -> list:
        """The models this task trains beside the loop's (companion.py: a discriminator, a critic): each
        a DCP folder of every mid-stage checkpoint, restored on a resume."""
        return []

    # -- evaluation ----------------------------------------------------------------------------------
    @abstractmethod
    def evaluate(self, model: nn.Module, folder: Path, validation: bool = False) -> tuple[dict, list, dict]:
        """Sample and score on rank 0: (metrics, mp4 paths, contact sheets by kind). `validation`: the
        in-training run (every stage.validate_every steps), which may add held-out figures."""
