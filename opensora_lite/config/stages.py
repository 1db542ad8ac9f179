"""A stage's effective config: the run's, with the stage's own autoencoder and patch applied.

A stage may train in another latent space than its parent (`stage.autoencoder`, `stage.patch_size`):
Open-Sora 2.0's high-compression adaptation moves a model trained on the Hunyuan VAE to the Video
DC-AE. Everything that depends on the latent space -- the model's input/output widths, bucket
granularity, token counts, timestep shift, the latent cache -- reads the config `stage_config` returns,
so none of it can fall back to the run's patch or compression by accident.

The same view gives each stage its audio: `model.audio` (the audio stream) belongs to the stages of kind
audio_video alone, so the stages before them train and save the video model, and an audio stage adds its
layers to that checkpoint initialised (spec.optional_keys), as Sora-2-style recipes add sound to a trained
video model; and `audio_autoencoder.path: "stage:<name>"` resolves, per stage, to the weights and latent
statistics of the audio autoencoder an earlier stage trained, by the same rule as `stage.autoencoder`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from omegaconf import OmegaConf

from opensora_lite.config.schema import AudioAutoencoderConfig, AutoencoderConfig, Config, DistillConfig, SampleConfig
from opensora_lite.errors import ConfigError
from opensora_lite.layout import config_dir

# stage.autoencoder, audio_autoencoder.path: "stage:<name>" -- the autoencoder an earlier stage of kind autoencoder
# trained in this run
TRAINED = "stage:"
AUDIO_KIND = "audio_video"  # the stage kind that trains the model's audio stream (model.audio)
DISTILL_KIND = "distill"  # the stage kind whose model is a few-step student (samples on its own schedule)


def load_autoencoder(name: str, key: str, base: AutoencoderConfig | None = None) -> AutoencoderConfig:
    """configs/autoencoder/<name>.yaml on the schema; `name` may also be a mapping of keys merged onto
    `base` (the run's autoencoder). Errors name `key`."""
    if isinstance(name, dict):
        node = OmegaConf.merge(OmegaConf.structured(base or AutoencoderConfig()), name)
    else:
        folder = config_dir() / "autoencoder"
        path = folder / f"{name}.yaml"
        if not path.is_file():
            choices = sorted(p.stem for p in folder.glob("*.yaml"))
            raise ConfigError(key, f"no autoencoder config {name!r}: choose one of {choices}")
        node = OmegaConf.merge(OmegaConf.structured(AutoencoderConfig), OmegaConf.load(path))
    try:
        return OmegaConf.to_object(node)
    except Exception as exc:  # a wrong key or type: OmegaConf's message names the field
        raise ConfigError(key, str(exc).strip().splitlines()[0]) from None


def stage_autoencoder(cfg: Config, name: str) -> AutoencoderConfig:
    """The autoencoder stage `name` trains with (the run's unless `stage.autoencoder` is set)."""
    spec = cfg.curriculum.stages[name].autoencoder
    if spec is None:
        return cfg.autoencoder
    key = f"curriculum.stages.{name}.autoencoder"
    if isinstance(spec, str) and spec.startswith(TRAINED):
        return trained_autoencoder(cfg, spec[len(TRAINED) :], name, key)
    return load_autoencoder(spec, key, cfg.autoencoder)


def trained_autoencoder(cfg: Config, source: str, name: str, key: str) -> AutoencoderConfig:
    """The video autoencoder stage `source` trains in this run, as stage `name` uses it (trained_weights)."""
    changes = trained_weights(cfg, source, name, key, "video")
    return dataclasses.replace(stage_autoencoder(cfg, source), **changes)


def trained_weights(cfg: Config, source: str, name: str, key: str, modality: str) -> dict:
    """What changes in an autoencoder config when stage `name` uses the one stage `source` (kind autoencoder,
    reconstruction.modality `modality`, before `name`) trains: `path` at its final weights (the EMA weights
    when it keeps them: those it was evaluated with) and the latents scaled to zero mean and unit variance
    by the statistics its evaluation measured (final/summary.json: latent_mean, latent_std). Until that
    stage has finished, the path does not exist yet (building the autoencoder then fails, naming it) and
    scale and shift are the config's."""
    from opensora_lite.layout import EMA_FILE, MODEL_FILE, run_dir_for

    order = list(cfg.curriculum.stages)
    src = cfg.curriculum.stages.get(source)
    if src is None or source not in trainers(cfg, modality) or order.index(source) >= order.index(name):
        earlier = [s for s in trainers(cfg, modality) if order.index(s) < order.index(name)]
        what = "names no earlier stage of kind autoencoder" + ("" if modality == "video" else f" ({modality})")
        raise ConfigError(key, f"{TRAINED}{source} {what} (those: {earlier})")
    final = Path(run_dir_for(cfg)) / source / "final"
    changes: dict = {"path": str(final / (EMA_FILE if src.ema_decay > 0 else MODEL_FILE))}
    summary = final / "summary.json"
    if summary.is_file():
        metrics = json.loads(summary.read_text()).get("metrics", {})
        if metrics.get("latent_std"):
            changes.update(scaling_factor=1.0 / metrics["latent_std"], shift_factor=metrics["latent_mean"])
    return changes


def trainers(cfg: Config, modality: str) -> list[str]:
    """The stages that train an autoencoder of `modality` (stage.reconstruction.modality), in order."""
    stages = cfg.curriculum.stages
    return [s for s in stages if stages[s].kind == "autoencoder" and stages[s].reconstruction.modality == modality]


def stage_audio_autoencoder(cfg: Config, name: str) -> AudioAutoencoderConfig:
    """The audio autoencoder stage `name` sees: the run's, with `path: "stage:<source>"` resolved. Stage
    `source` itself trains it from scratch (no path), and so do stages before it that do not use it (they
    see random weights they never read); every other stage gets its trained weights and statistics."""
    a = cfg.audio_autoencoder
    if not (isinstance(a.path, str) and a.path.startswith(TRAINED)):
        return a
    source, order, key = a.path[len(TRAINED) :], list(cfg.curriculum.stages), "audio_autoencoder.path"
    if source not in trainers(cfg, "audio"):
        what = "names no stage of kind autoencoder (reconstruction.modality: audio)"
        raise ConfigError(key, f"{TRAINED}{source} {what} (those: {trainers(cfg, 'audio')})")
    stage = cfg.curriculum.stages[name]
    before = source in order and order.index(name) < order.index(source)
    if name == source or (before and stage.kind != AUDIO_KIND):
        return dataclasses.replace(a, path=None)
    return dataclasses.replace(a, **trained_weights(cfg, source, name, key, "audio"))


def stage_patch(cfg: Config, name: str, ae: AutoencoderConfig | None = None) -> list[int]:
    """The model's patch in stage `name`: stage.patch_size, else a switched-to autoencoder's own
    patch_size, else model.patch_size."""
    stage = cfg.curriculum.stages[name]
    if stage.patch_size is not None:
        return list(stage.patch_size)
    if stage.autoencoder is not None:
        ae = ae or stage_autoencoder(cfg, name)
        if ae.patch_size is not None:
            return list(ae.patch_size)
    return list(cfg.model.patch_size)


def stage_config(cfg: Config, name: str) -> Config:
    """The run's config as stage `name` sees it: its autoencoder, and the model's latent channels and
    patch to match; its audio autoencoder; model.audio only in a stage of kind audio_video. The same
    object when the stage changes nothing."""
    stage = cfg.curriculum.stages[name]
    audio_ae = stage_audio_autoencoder(cfg, name)
    drop_audio = getattr(cfg.model, "audio", None) is not None and stage.kind != AUDIO_KIND
    sample = student_sampling(cfg.sample, stage.distill) if stage.kind == DISTILL_KIND else cfg.sample
    unchanged = stage.autoencoder is None and stage.patch_size is None and audio_ae is cfg.audio_autoencoder
    if unchanged and not drop_audio and sample is cfg.sample:
        return cfg
    model = dataclasses.replace(cfg.model, audio=None) if drop_audio else cfg.model
    ae = cfg.autoencoder
    if stage.autoencoder is not None or stage.patch_size is not None:
        ae = stage_autoencoder(cfg, name)
        model = dataclasses.replace(model, latent_channels=ae.latent_channels, patch_size=stage_patch(cfg, name, ae))
    return dataclasses.replace(cfg, autoencoder=ae, audio_autoencoder=audio_ae, model=model, sample=sample)


def student_sampling(sample: SampleConfig, distill: DistillConfig) -> SampleConfig:
    """How a distilled student samples (its stage's evaluation, and osl-sample's default on its weights):
    its own few steps, one forward a step (the guidance is distilled into it: no CFG, no oscillation)."""
    return dataclasses.replace(
        sample,
        num_steps=distill.steps,
        cfg_scale=1.0,
        image_cfg_scale=None,
        audio_cfg_scale=None,
        text_oscillation=False,
        image_oscillation=False,
        image_ramp=False,
    )


def parent_config(cfg: Config, name: str) -> Config | None:
    """The config the stage's initial weights were trained under: the previous stage's with
    `init: previous`, the run's own for a checkpoint path, None from scratch."""
    init = cfg.curriculum.stages[name].init
    if init == "none":
        return None
    if init == "previous":
        order = list(cfg.curriculum.stages)
        index = order.index(name)
        return stage_config(cfg, order[index - 1]) if index > 0 else None
    return cfg


def latent_space(cfg: Config) -> tuple:
    """What the model's latent-facing layers depend on: the autoencoder (less its placement and precision
    settings) and the patch."""
    skip = ("offload_decoder", "tiling", "dtype")
    ae = {k: v for k, v in dataclasses.asdict(cfg.autoencoder).items() if k not in skip}
    return (ae, list(cfg.model.patch_size))


def switches_autoencoder(cfg: Config, name: str) -> bool:
    """Whether stage `name` starts from weights trained in another latent space than its own."""
    parent = parent_config(cfg, name)
    return parent is not None and latent_space(parent) != latent_space(stage_config(cfg, name))
