"""A curriculum stage as the planner sees it: the config with the plan's per-stage settings applied."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf

from opensora_lite.config.schema import (
    AudioAutoencoderConfig,
    AutoencoderConfig,
    ParallelConfig,
    PlanJobConfig,
    SampleKind,
    StageConfig,
    StagePlanConfig,
)
from opensora_lite.config.stages import load_autoencoder, stage_config
from opensora_lite.data.buckets import BucketTable
from opensora_lite.diffusion.conditioning import uses_image_condition
from opensora_lite.errors import ConfigError
from opensora_lite.models.spec import ModelSpec, spec_for
from opensora_lite.registry import ENGINES


@dataclass
class StageSetup:
    name: str
    stage: StageConfig
    model: Any  # the model family's config (model.family)
    autoencoder: AutoencoderConfig
    parallel: ParallelConfig
    table: BucketTable
    gpus: int
    steps: int
    mfu: float
    samples: list[SampleKind] | None
    image_condition: bool
    reference_gpu_days: float | None
    reference_clips: float | None
    # the audio autoencoder of a stage whose model has an audio stream (stage.kind audio_video), else None;
    # fps: the frame rate the windows play at (data.target_fps), which fixes each window's seconds of sound
    audio: AudioAutoencoderConfig | None = None
    fps: float = 24.0

    @property
    def dp_size(self) -> int:
        return self.gpus // self.parallel.sp_size

    @property
    def spec(self) -> ModelSpec:
        return spec_for(self.model)

    def block_counts(self) -> dict[str, int]:
        """Blocks per group of the model (what parallel.ac_blocks counts)."""
        return dict(self.spec.activations(self.model).blocks)


def stage_plans(cfg: PlanJobConfig) -> dict[str, StagePlanConfig]:
    """plan.stages typed: every entry a stage of the curriculum with StagePlanConfig's keys only."""
    names = list(cfg.curriculum.stages)
    out = {}
    for name, entry in cfg.plan.stages.items():
        key = f"plan.stages.{name}"
        if name not in names:
            raise ConfigError(key, f"no such stage in curriculum {cfg.curriculum.name}: {names}")
        if entry is None:
            entry = {}
        if not isinstance(entry, dict):
            raise ConfigError(key, f"needs a mapping of settings, got {entry!r}")
        for k in entry:
            if k not in StagePlanConfig.__dataclass_fields__:
                raise ConfigError(
                    f"{key}.{k}", f"unknown key (choose from {sorted(StagePlanConfig.__dataclass_fields__)})"
                )
        try:
            out[name] = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(StagePlanConfig), entry))
        except Exception as exc:  # a wrong type: OmegaConf's message names the field
            first = str(exc).strip().splitlines()[0]
            raise ConfigError(key, first) from None
    return out


def stage_setups(cfg: PlanJobConfig, mfu: float) -> list[StageSetup]:
    plan = cfg.plan
    names = list(cfg.curriculum.stages)
    if not names:
        raise ConfigError("curriculum.stages", "the curriculum has no stages to plan")
    plans = stage_plans(cfg)
    out = []
    for name in names:
        sp: StagePlanConfig = plans.get(name, StagePlanConfig())
        key = f"plan.stages.{name}"
        view = stage_config(cfg, name)  # the stage's own autoencoder and patch; the plan's override them
        ae = load_autoencoder(sp.autoencoder, f"{key}.autoencoder") if sp.autoencoder else view.autoencoder
        patch = view.model.patch_size
        if sp.patch_size is not None:
            patch = sp.patch_size
        elif sp.autoencoder and ae.patch_size is not None:
            patch = ae.patch_size
        model = dataclasses.replace(view.model, latent_channels=ae.latent_channels, patch_size=list(patch))
        par = dataclasses.replace(
            cfg.parallel,
            **{f: getattr(sp, f) for f in ("engine", "sp_size", "ac_blocks") if getattr(sp, f) is not None},
        )
        if par.engine not in ENGINES:
            raise ConfigError(f"{key}.engine", f"unknown engine {par.engine!r}: choose one of {list(ENGINES)}")
        gpus = sp.gpus if sp.gpus is not None else plan.gpus
        if gpus < 1:
            raise ConfigError(f"{key}.gpus" if sp.gpus is not None else "plan.gpus", f"must be >= 1, got {gpus}")
        heads = spec_for(model).heads(model) if par.sp_size > 1 else 1
        if par.sp_size < 1 or gpus % par.sp_size or heads % par.sp_size:
            raise ConfigError(
                f"{key}.sp_size", f"sp_size {par.sp_size} must divide the GPUs ({gpus}) and the heads ({heads})"
            )
        for group in par.ac_blocks:
            if group not in spec_for(model).block_groups:
                groups = list(spec_for(model).block_groups)
                raise ConfigError(f"{key}.ac_blocks.{group}", f"the model has no block group {group!r} ({groups})")
        stage_mfu = sp.mfu if sp.mfu is not None else mfu
        if not 0 < stage_mfu <= (1 if plan.metrics is None or sp.mfu is not None else float("inf")):
            raise ConfigError(f"{key}.mfu" if sp.mfu is not None else "plan.mfu", f"must be in (0, 1], got {stage_mfu}")
        stage = cfg.curriculum.stages[name]
        multiple = ae.spatial_factor * model.patch_size[1]
        out.append(
            StageSetup(
                name=name,
                stage=stage,
                model=model,
                autoencoder=ae,
                parallel=par,
                table=BucketTable(stage.buckets, cfg.data.aspect_ratios, multiple),
                gpus=gpus,
                steps=sp.steps if sp.steps is not None else stage.steps,
                mfu=stage_mfu,
                samples=list(sp.samples) if sp.samples is not None else None,
                image_condition=uses_image_condition(stage.tasks),
                reference_gpu_days=sp.reference_gpu_days,
                reference_clips=sp.reference_clips,
                audio=view.audio_autoencoder if spec_for(model).audio_stream(model) is not None else None,
                fps=cfg.data.target_fps,
            )
        )
    return out
