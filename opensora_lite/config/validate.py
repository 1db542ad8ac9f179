"""Cross-field checks that types alone cannot express. Each failure names the offending key."""

from __future__ import annotations

from opensora_lite.autoencoders.base import frame_rule, frames_fit, latent_frame_count
from opensora_lite.config.schema import Config, StageConfig
from opensora_lite.config.validate_audio import validate_audio, validate_audio_autoencoder
from opensora_lite.data.buckets import parse_resolution
from opensora_lite.data.synthetic import ALL_COLOURS
from opensora_lite.diffusion.av import AV_TASKS, BALANCES, MODALITIES
from opensora_lite.diffusion.conditioning import TASKS
from opensora_lite.errors import ConfigError
from opensora_lite.models.spec import spec_for
from opensora_lite.registry import (
    AUDIO_LAYOUTS,
    AUTOENCODER_KINDS,
    DISTILL_METHODS,
    ENGINES,
    RECONSTRUCTION_MODALITIES,
    STAGE_KINDS,
    TRAINABLE_AUDIO_AUTOENCODERS,
    TRAINABLE_AUTOENCODERS,
    engines_with,
)


def installed(package: str) -> bool:
    """Whether an optional package can be imported (checked at start-up, before anything is created)."""
    import importlib.util

    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # present in sys.modules but unusable
        return False


def _require(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(key, message)


def valid_frame_count(cfg: Config, n: int) -> bool:
    """The autoencoder's frame rule (autoencoders/base.py), for bucket tables and any other frame count."""
    return frames_fit(n, cfg.autoencoder.temporal_factor, cfg.autoencoder.causal)


def check_frame_count(cfg: Config, n: int, key: str) -> None:
    """Raise one ConfigError naming `key` unless the autoencoder can encode `n` frames."""
    ae = cfg.autoencoder
    _require(
        valid_frame_count(cfg, n),
        key,
        f"{n} frames do not suit autoencoder {ae.kind} ({frame_rule(ae.temporal_factor, ae.causal)})",
    )


def validate_model(cfg: Config) -> None:
    """The model family's own checks (its spec), and what the run asks of the family."""
    m = cfg.model
    spec = spec_for(m)
    _require(
        len(m.patch_size) == 3 and min(m.patch_size) >= 1, "model.patch_size", "needs 3 positive entries (t, h, w)"
    )
    spec.validate(m, cfg.text_encoder)
    _require(
        m.latent_channels == cfg.autoencoder.latent_channels,
        "model.latent_channels",
        f"{m.latent_channels} != autoencoder.latent_channels {cfg.autoencoder.latent_channels}",
    )
    can = spec.capabilities
    par = cfg.parallel
    _require(
        par.sp_size == 1 or can.sequence_parallel,
        "parallel.sp_size",
        f"model family {spec.family} has no sequence parallelism yet (parallel.sp_size=1)",
    )
    _require(
        not par.meta_init or can.meta_init,
        "parallel.meta_init",
        f"model family {spec.family} cannot start on the meta device yet (parallel.meta_init=false)",
    )
    for group in par.ac_blocks:
        _require(
            group in spec.block_groups,
            f"parallel.ac_blocks.{group}",
            f"model family {spec.family} has no block group {group!r}; its groups: {list(spec.block_groups)}",
        )
        _require(par.ac_blocks[group] >= 0, f"parallel.ac_blocks.{group}", "must be >= 0")
    for name, stage in cfg.curriculum.stages.items():
        conditioned = [t for t, w in stage.tasks.items() if t != "t2v" and w > 0]
        _require(
            stage.kind != "diffusion" or not conditioned or can.image_condition,
            f"curriculum.stages.{name}.tasks",
            f"model family {spec.family} has no image/video condition yet: {conditioned} need one (t2v only)",
        )


def validate_autoencoder(ae, key: str = "autoencoder") -> None:
    _require(ae.kind in AUTOENCODER_KINDS, f"{key}.kind", f"unknown {ae.kind!r} ({' | '.join(AUTOENCODER_KINDS)})")
    if ae.kind == "pixel":
        _require(
            ae.latent_channels == 3 * ae.spatial_factor**2,
            f"{key}.latent_channels",
            "pixel needs 3 * spatial_factor^2",
        )
        _require(
            ae.temporal_factor == 1 and not ae.causal,
            f"{key}.temporal_factor",
            "pixel has temporal_factor 1, causal false",
        )
    p = ae.patch_size
    _require(p is None or (len(p) == 3 and min(p) >= 1), f"{key}.patch_size", "needs 3 positive entries (t, h, w)")


def validate_components(cfg: Config) -> None:
    validate_autoencoder(cfg.autoencoder)
    for name in ("t5", "clip"):
        tm = getattr(cfg.text_encoder, name)
        _require(
            bool(tm.path) != bool(tm.tiny), f"text_encoder.{name}", "set exactly one of path (local weights) or tiny"
        )
        _require(tm.max_length > 0, f"text_encoder.{name}.max_length", "must be positive")
        _require(
            tm.tokenizer in ("bytes", "words"),
            f"text_encoder.{name}.tokenizer",
            f"unknown {tm.tokenizer!r} (tiny encoders: bytes or words; real weights bring their own)",
        )
        _require(tm.dtype in ("fp32", "bf16", "fp16"), f"text_encoder.{name}.dtype", f"unknown {tm.dtype!r}")
    d = cfg.data
    validate_audio(d.audio, "data.audio")
    validate_audio_autoencoder(cfg.audio_autoencoder)
    if d.audio.enabled:
        channels = AUDIO_LAYOUTS[d.audio.layout]
        _require(
            cfg.audio_autoencoder.channels == channels,
            "audio_autoencoder.channels",
            f"{cfg.audio_autoencoder.channels} differs from data.audio.layout {d.audio.layout} ({channels})",
        )
        _require(
            cfg.audio_autoencoder.mel.sample_rate == d.audio.sample_rate,
            "audio_autoencoder.mel.sample_rate",
            f"{cfg.audio_autoencoder.mel.sample_rate} differs from data.audio.sample_rate {d.audio.sample_rate}",
        )
    _require(d.target_fps > 0, "data.target_fps", "must be positive")
    _require(d.num_workers >= 0, "data.num_workers", "must be >= 0")
    _require(d.kind in ("video", "cached"), "data.kind", f"unknown {d.kind!r} (video | cached)")
    _require(len(d.aspect_ratios) > 0 and min(d.aspect_ratios) > 0, "data.aspect_ratios", "need positive h/w ratios")
    f = cfg.flow
    _require(f.max_tokens > f.base_tokens, "flow.max_tokens", "must exceed flow.base_tokens")
    _require(0 <= f.sigma_min < 1, "flow.sigma_min", "must be in [0, 1)")
    _require(cfg.run.device in ("auto", "cpu", "cuda"), "run.device", f"unknown {cfg.run.device!r} (auto | cpu | cuda)")
    _require(cfg.run.dtype in ("fp32", "bf16"), "run.dtype", f"unknown {cfg.run.dtype!r} (fp32 | bf16)")
    from opensora_lite.parallel import require_package

    engine = cfg.parallel.engine
    _require(engine in ENGINES, "parallel.engine", f"unknown {engine!r} ({' | '.join(ENGINES)})")
    require_package(engine)
    _require(cfg.parallel.hsdp_replicas >= 1, "parallel.hsdp_replicas", "must be at least 1")
    _require(
        cfg.parallel.hsdp_replicas == 1 or ENGINES[engine].hsdp,
        "parallel.hsdp_replicas",
        f"only {' | '.join(engines_with('hsdp'))} has HSDP, not {engine}",
    )
    info = ENGINES[engine]
    _require(
        not cfg.parallel.meta_init or info.meta_init,
        "parallel.meta_init",
        f"only {' and '.join(engines_with('meta_init'))} build the model sharded, not {engine}",
    )
    _require(
        not cfg.parallel.shard_one_rank or engine == "fsdp2",
        "parallel.shard_one_rank",
        f"shards one rank with parallel=fsdp2 only, not {engine}",
    )
    _require(
        info.sequence_parallel or cfg.parallel.sp_size == 1,
        "parallel.sp_size",
        f"{engine} has no sequence-parallel axis; use one of {' | '.join(engines_with('sequence_parallel'))}",
    )
    _require(
        not cfg.parallel.options or info.options,
        "parallel.options",
        f"{engine} takes no backend options ({' | '.join(engines_with('options'))} do)",
    )
    sp = cfg.parallel.sp_size
    _require(sp >= 1, "parallel.sp_size", "must be at least 1")
    heads = spec_for(cfg.model).heads(cfg.model) if sp > 1 else 1
    _require(
        heads % sp == 0, "parallel.sp_size", f"{sp} does not divide the model's {heads} heads (Ulysses splits heads)"
    )
    _require(cfg.parallel.param_dtype in ("auto", "bf16", "fp32"), "parallel.param_dtype", "auto | bf16 | fp32")
    _require(cfg.eval.kind in (None, "shapes"), "eval.kind", f"unknown {cfg.eval.kind!r} (shapes | null)")
    unknown = sorted(set(cfg.eval.colours or []) - set(ALL_COLOURS))
    _require(not unknown, "eval.colours", f"unknown {unknown} (choose from {list(ALL_COLOURS)})")
    s = cfg.sample
    _require(s.num_steps > 0, "sample.num_steps", "must be positive")
    # 0 is not "unset" (null is): refused rather than silently replaced by the default
    _require(
        s.num_frames is None or s.num_frames >= 1, "sample.num_frames", f"must be >= 1 or null, got {s.num_frames}"
    )
    _require(s.fps is None or s.fps > 0, "sample.fps", f"must be positive or null (data.target_fps), got {s.fps}")
    _require(s.batch_size >= 1, "sample.batch_size", f"must be >= 1, got {s.batch_size}")
    _require(s.save_videos >= 0, "sample.save_videos", f"must be >= 0, got {s.save_videos}")
    _require(
        cfg.logger.wandb.mode in ("online", "offline", "disabled"), "logger.wandb.mode", "online | offline | disabled"
    )


def validate_stage(cfg: Config, name: str, stage: StageConfig, first: bool) -> None:
    key = f"curriculum.stages.{name}"
    _require(stage.steps > 0, f"{key}.steps", "must be positive")
    _require(stage.grad_accum >= 1, f"{key}.grad_accum", "must be >= 1")
    _require(bool(stage.init), f"{key}.init", "must be previous, none, or a checkpoint path")
    _require(not (first and stage.init == "previous"), f"{key}.init", "'previous' but this is the first stage")
    _require(len(stage.buckets) > 0, f"{key}.buckets", "needs at least one resolution")
    _require(
        not (stage.ema_decay > 0 and not ENGINES[cfg.parallel.engine].ema),
        f"{key}.ema_decay",
        f"EMA is not supported with {cfg.parallel.engine} (its weights are partitioned); use fsdp2 or deepspeed_zero2",
    )
    multiple = cfg.autoencoder.spatial_factor * cfg.model.patch_size[1]
    for res, frames in stage.buckets.items():
        try:
            px = parse_resolution(res)
        except ValueError as exc:
            raise ConfigError(f"{key}.buckets.{res}", str(exc)) from None
        _require(px >= multiple, f"{key}.buckets.{res}", f"smaller than the spatial granularity {multiple}")
        _require(len(frames) > 0, f"{key}.buckets.{res}", "needs at least one frame count")
        for n, entry in frames.items():
            bkey = f"{key}.buckets.{res}.{n}"
            _require(n >= 1, bkey, "frame count must be >= 1")
            check_frame_count(cfg, n, bkey)
            ok = len(entry) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in entry)
            _require(ok, bkey, f"needs [probability, batch_size] numbers, got {list(entry)}")
            prob, batch = entry
            _require(0 < prob <= 1, bkey, f"probability must be in (0, 1], got {prob}")
            _require(
                batch >= 1 and float(batch).is_integer(), bkey, f"batch size must be a positive integer, got {batch}"
            )
            if n > 1:
                latent_t = latent_frame_count(n, cfg.autoencoder.temporal_factor, cfg.autoencoder.causal)
                _require(
                    latent_t % cfg.model.patch_size[0] == 0, bkey, "latent frames not divisible by model.patch_size[0]"
                )
    _require(stage.kind in STAGE_KINDS, f"{key}.kind", f"unknown {stage.kind!r}; choose from {STAGE_KINDS}")
    if stage.kind == "autoencoder":
        validate_reconstruction(cfg, key, stage)
    if stage.kind == "audio_video":
        validate_audio_video(cfg, key, stage)
    if stage.kind == "distill":
        validate_distill(cfg, key, stage)
    for task, weight in stage.tasks.items():
        known = AV_TASKS if stage.kind == "audio_video" else TASKS
        _require(task in known, f"{key}.tasks.{task}", f"unknown task; choose from {tuple(known)}")
        _require(weight >= 0, f"{key}.tasks.{task}", "weight must be >= 0")
    _require(
        stage.kind == "autoencoder" or sum(stage.tasks.values()) > 0,
        f"{key}.tasks",
        "needs a positive weight for at least one task (e.g. {t2v: 1.0})",
    )
    if any(stage.tasks.get(t, 0) > 0 for t in ("v2v_head", "v2v_tail")):
        _require(stage.v2v_frames >= 1, f"{key}.v2v_frames", "must be >= 1 when a v2v task has weight")
    _require(stage.validate_every >= 0, f"{key}.validate_every", "must be >= 0 (0 disables)")
    for enc, p in stage.text_dropout.items():
        _require(enc in ("t5", "clip"), f"{key}.text_dropout.{enc}", "keys are t5 and clip")
        _require(0 <= p <= 1, f"{key}.text_dropout.{enc}", "must be in [0, 1]")
    o = stage.optim
    _require(o.lr > 0, f"{key}.optim.lr", "must be positive")
    _require(
        o.schedule in ("constant", "cosine"), f"{key}.optim.schedule", f"unknown {o.schedule!r} (constant | cosine)"
    )
    _require(len(o.betas) == 2, f"{key}.optim.betas", "needs two values")
    _require(0 <= stage.ema_decay < 1, f"{key}.ema_decay", "must be in [0, 1)")
    _require(stage.keep_checkpoints >= 1, f"{key}.keep_checkpoints", "must be >= 1")
    if stage.lora.rank:
        validate_lora(cfg, key, stage)
        if cfg.run.stage in (None, name):  # a stage that runs here needs peft (an optional extra)
            _require(
                installed("peft"),
                f"{key}.lora.rank",
                "a LoRA stage needs the peft package, which is not installed: add the lora extra "
                "(scripts/install.sh lora, or pip install -e '.[lora]'; docs/lora.md)",
            )


def validate_distill(cfg: Config, key: str, stage: StageConfig) -> None:
    """A distill stage (stage.kind=distill): a teacher to distil, a known method, sane schedule settings."""
    d, dkey = stage.distill, f"{key}.distill"
    _require(d.method in DISTILL_METHODS, f"{dkey}.method", f"unknown {d.method!r} ({' | '.join(DISTILL_METHODS)})")
    _require(
        d.gan_weight == 0,
        f"{dkey}.gan_weight",
        "DMD2's GAN term is not built yet: keep 0 (the distribution-matching loss alone)",
    )
    _require(d.steps >= 1, f"{dkey}.steps", "the student's sampling steps must be >= 1")
    _require(d.critic_steps >= 1, f"{dkey}.critic_steps", "must be >= 1 (critic updates per student update)")
    _require(0 <= d.t_min < d.t_max <= 1, f"{dkey}.t_min", f"needs 0 <= t_min < t_max <= 1, got {d.t_min}, {d.t_max}")
    _require(
        d.teacher is not None or stage.init != "none",
        f"{key}.init",
        "a distill stage starts its student from the teacher: give init (previous or a path) or distill.teacher",
    )
    _require(cfg.parallel.sp_size == 1, "parallel.sp_size", "a distill stage has no sequence parallelism yet")


def validate_reconstruction(cfg: Config, key: str, stage: StageConfig) -> None:
    """An autoencoder stage (stage.kind=autoencoder): its loss settings and what it runs with."""
    r, rkey = stage.reconstruction, f"{key}.reconstruction"
    engine = cfg.parallel.engine
    _require(
        ENGINES[engine].autoencoder_stage,
        "parallel.engine",
        f"an autoencoder stage runs on {' | '.join(engines_with('autoencoder_stage'))}",
    )
    _require(cfg.parallel.sp_size == 1, "parallel.sp_size", "an autoencoder stage has no sequence parallelism")
    _require(cfg.data.kind != "cached", "data.kind", "an autoencoder stage trains on pixels, not a latent cache")
    _require(stage.lora.rank == 0, f"{key}.lora.rank", "LoRA applies to the MMDiT, not an autoencoder stage")
    modalities = " | ".join(RECONSTRUCTION_MODALITIES)
    _require(r.modality in RECONSTRUCTION_MODALITIES, f"{rkey}.modality", f"unknown {r.modality!r} ({modalities})")
    if r.modality == "audio":
        a = cfg.audio_autoencoder
        _require(
            a.kind in TRAINABLE_AUDIO_AUTOENCODERS,
            "audio_autoencoder.kind",
            f"{a.kind} is frozen here; an audio autoencoder stage trains {TRAINABLE_AUDIO_AUTOENCODERS}",
        )
        _require(cfg.data.audio.enabled, "data.audio.enabled", "an audio autoencoder stage trains on the clips' sound")
        for name in ("perceptual_weight", "disc_weight"):
            _require(getattr(r, name) == 0, f"{rkey}.{name}", "the audio autoencoder trains with L1 on its log-mel")
        for res, frames in stage.buckets.items():
            _require(1 not in frames, f"{key}.buckets.{res}", "1-frame buckets are images: they have no sound")
    else:
        _require(
            cfg.autoencoder.kind in TRAINABLE_AUTOENCODERS,
            "autoencoder.kind",
            f"{cfg.autoencoder.kind} has no training forward (nothing to train for pixel); an autoencoder stage "
            f"trains {TRAINABLE_AUTOENCODERS}",
        )
    for name in ("l1_weight", "perceptual_weight", "disc_weight", "disc_start"):
        _require(getattr(r, name) >= 0, f"{rkey}.{name}", "must be >= 0")
    _require(0 <= r.image_fraction <= 1, f"{rkey}.image_fraction", "must be in [0, 1]")
    _require(
        r.perceptual_weight == 0 or bool(r.vgg_path),
        f"{rkey}.vgg_path",
        "perceptual_weight > 0 needs local VGG weights (a .safetensors file); or set perceptual_weight=0",
    )
    _require(r.disc_weight == 0 or (r.disc_channels >= 1 and r.disc_layers >= 1), f"{rkey}.disc_layers", "must be >= 1")
    _require(r.disc_lr > 0, f"{rkey}.disc_lr", "must be positive")


def validate_lora(cfg: Config, key: str, stage: StageConfig) -> None:
    """stage.lora with rank > 0: its settings, and what LoRA does not run with (one line each)."""
    import re

    GROUPS = spec_for(cfg.model).lora_groups

    lora, key = stage.lora, f"{key}.lora"
    _require(lora.rank > 0, f"{key}.rank", "must be >= 0 (0: full training)")
    _require(lora.alpha > 0, f"{key}.alpha", "must be positive")
    _require(0 <= lora.dropout < 1, f"{key}.dropout", "must be in [0, 1)")
    _require(len(lora.targets) > 0, f"{key}.targets", f"needs at least one of {list(GROUPS)} or a module-name pattern")
    for target in lora.targets:
        if target not in GROUPS:
            try:
                re.compile(target)
            except re.error as exc:
                raise ConfigError(
                    f"{key}.targets", f"{target!r} is neither a group {list(GROUPS)} nor a regex ({exc})"
                ) from None
    _require(lora.base_dtype in ("auto", "fp32", "bf16"), f"{key}.base_dtype", "auto | fp32 | bf16")
    engine = cfg.parallel.engine
    _require(
        ENGINES[engine].lora,
        f"{key}.rank",
        f"LoRA is not supported with parallel={engine}; use one of {' | '.join(engines_with('lora'))}",
    )
    _require(not cfg.parallel.meta_init, f"{key}.rank", "LoRA stages do not build on meta (parallel.meta_init=false)")
    _require(stage.ema_decay == 0, f"{key}.rank", "EMA of the adapters is not supported yet (ema_decay=0)")
    _require(
        not (lora.base_dtype == "bf16" and engine not in ("single", "ddp")),
        f"{key}.base_dtype",
        f"bf16 base weights are for single | ddp (parallel={engine} keeps fp32 masters; its param_dtype sets compute)",
    )
    _require(
        not (lora.base_dtype == "bf16" and cfg.run.dtype != "bf16"),
        f"{key}.base_dtype",
        f"bf16 base weights need bf16 autocast (run.dtype=bf16; it is {cfg.run.dtype})",
    )


def async_checkpoint_note(cfg: Config, stage: StageConfig) -> str | None:
    """The start-up line where `stage.async_checkpoint` is asked of an engine that cannot write in the
    background (DeepSpeed's and ColossalAI's optimizer checkpoints are their own, written synchronously).
    Not an error: the stage runs, with synchronous checkpoints."""
    if not stage.async_checkpoint or ENGINES[cfg.parallel.engine].writes_async:
        return None
    return (
        f"async_checkpoint is not available with parallel={cfg.parallel.engine} (its optimizer checkpoint is "
        f"the backend's own format, written synchronously); checkpoints are written synchronously "
        f"(asynchronous with {' | '.join(engines_with('writes_async'))})"
    )


def validate_data(cfg: Config) -> None:
    from opensora_lite.data.captions import CAPTION_FIELDS, MOTION_FIELDS

    sample = dict.fromkeys(CAPTION_FIELDS, 1.0) | {"caption": "a caption", "vmaf_motion_int": 1}
    templates = {"data.caption_template": cfg.data.caption_template}
    if cfg.data.image_caption_template is not None:
        templates["data.image_caption_template"] = cfg.data.image_caption_template
    for key, template in templates.items():
        try:
            template.format_map(sample)
        except (KeyError, ValueError, IndexError) as exc:
            raise ConfigError(key, f"{template!r}: {exc!r}; fields: {', '.join(CAPTION_FIELDS)}") from None
    samples = any(s.evaluate or s.validate_every for s in cfg.curriculum.stages.values())
    used = {f for t in templates.values() for f in _template_fields(t)} & set(MOTION_FIELDS)
    if samples and cfg.sample.motion_score is None and used:
        raise ConfigError(
            "sample.motion_score",
            f"the caption template uses {', '.join(sorted(used))}: set the value sampled captions get "
            "(Open-Sora 2.0: 4)",
        )


def _template_fields(template: str) -> set[str]:
    import string

    return {name.split(".")[0].split("[")[0] for _, name, _, _ in string.Formatter().parse(template) if name}


def _stage_view(cfg: Config, name: str) -> Config:
    """The stage's effective config (config/stages.py), with what a switch of autoencoder needs checked."""
    from opensora_lite.config.stages import stage_config, switches_autoencoder

    stage, key = cfg.curriculum.stages[name], f"curriculum.stages.{name}"
    p = stage.patch_size
    _require(p is None or (len(p) == 3 and min(p) >= 1), f"{key}.patch_size", "needs 3 positive entries (t, h, w)")
    view = stage_config(cfg, name)
    if view is cfg:
        return cfg
    validate_autoencoder(view.autoencoder, f"{key}.autoencoder")
    if switches_autoencoder(cfg, name):
        _require(
            stage.lora.rank == 0,
            f"{key}.autoencoder",
            "a LoRA stage cannot switch autoencoder (its re-initialised img_in/final_layer would stay frozen)",
        )
        _require(
            not cfg.parallel.meta_init,
            f"{key}.autoencoder",
            "a stage that switches autoencoder builds its model whole: set parallel.meta_init=false",
        )
    return view


def validate(cfg: Config) -> Config:
    """Raise ConfigError for the first inconsistency; return cfg unchanged otherwise."""
    validate_model(cfg)
    validate_components(cfg)
    validate_data(cfg)
    stages = list(cfg.curriculum.stages)
    _require(len(stages) > 0, "curriculum.stages", "the curriculum has no stages")
    for i, name in enumerate(stages):
        validate_stage(_stage_view(cfg, name), name, cfg.curriculum.stages[name], first=i == 0)
    if cfg.run.stage is not None:
        _require(cfg.run.stage in stages, "run.stage", f"{cfg.run.stage!r} is not a stage of this curriculum {stages}")
    return cfg


def validate_audio_video(cfg, key: str, stage) -> None:
    """A stage of kind audio_video: a model with an audio stream, batches with sound, known loss settings."""
    _require(
        spec_for(cfg.model).audio_stream(cfg.model) is not None,
        "model.audio",
        f"{key} (kind audio_video) needs a model with an audio stream (model.audio: {{...}}, docs/audio-video.md)",
    )
    _require(cfg.data.audio.enabled, "data.audio.enabled", f"{key} (kind audio_video) trains on sound: set it true")
    _require(
        cfg.data.kind != "cached",
        "data.kind",
        f"{key} (kind audio_video) encodes its batches on the fly (its task does not read the cache's audio_x0 yet)",
    )
    validate_audio_latents(cfg, key)
    av = stage.audio_video
    _require(av.balance in BALANCES, f"{key}.audio_video.balance", f"unknown {av.balance!r}; choose from {BALANCES}")
    _require(0 <= av.balance_decay < 1, f"{key}.audio_video.balance_decay", "must be in [0, 1)")
    for m, w in av.weights.items():
        _require(m in MODALITIES, f"{key}.audio_video.weights.{m}", f"keys are {' and '.join(MODALITIES)}")
        _require(w >= 0, f"{key}.audio_video.weights.{m}", "must be >= 0")


def validate_audio_latents(cfg, key: str) -> None:
    """model.audio must describe the audio autoencoder's latents (channels, bins, latent frames a second):
    otherwise the first step fails deep in the model. One error naming both sides and the settings to give."""
    import math

    from opensora_lite.autoencoders.audio import latent_geometry

    stream, a = spec_for(cfg.model).audio_stream(cfg.model), cfg.audio_autoencoder
    channels, bins, rate = latent_geometry(a)
    model = (stream.channels, stream.bins, stream.latents_per_second)
    if model[:2] == (channels, bins) and math.isclose(model[2], rate):
        return
    raise ConfigError(
        "model.audio",
        f"{key} (kind audio_video): the model takes audio latents of {model[0]} channels x {model[1]} bins at "
        f"{model[2]:g} latent frames a second, but audio_autoencoder ({a.kind}) gives {channels} x {bins} at "
        f"{rate:g} (audio_autoencoder.latent_channels; mel.n_mels {a.mel.n_mels} / mel_factor {a.mel_factor}; "
        f"mel.sample_rate {a.mel.sample_rate} / mel.hop_length {a.mel.hop_length} / time_factor {a.time_factor}). "
        f"Set model.audio.latent_channels={channels}, model.audio.latent_bins={bins}, "
        f"model.audio.latents_per_second={rate:g} (or choose the audio autoencoder the model was made for)",
    )
