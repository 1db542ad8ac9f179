"""`osl-sample`: generate videos from a stage checkpoint, with the run's own config.

osl-sample checkpoint=runs/tiny_cpu/hires prompts='["a fast red circle moving left"]'
osl-sample checkpoint=runs/tiny_cpu/i2v image=ref.png prompts='["a fast red circle moving up"]'
osl-sample checkpoint=runs/os2/i2v_256px task=v2v_head reference=clip.mp4 prompt_file=prompts.txt \
    cfg_scale=7.5 image_cfg_scale=3 text_oscillation=true image_oscillation=true image_ramp=true motion_score=4
osl-sample checkpoint=runs/tiny_av/t2av cfg_scale=4 audio_cfg_scale=3      # a model with sound: mp4s with AAC
osl-sample checkpoint=runs/tiny_av/t2av video=clip.mp4                     # video -> audio (task v2a)

Writes one mp4 per sample, contact_sheet.png (a row per sample) and samples.json (the settings, and
per sample its caption, seed and file) into `out`; by default a new numbered folder per call,
<stage>/samples_cli/001, 002, ..., so a second call never overwrites the record of the first.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from opensora_lite.autoencoders import build_autoencoder
from opensora_lite.autoencoders.audio import build_audio_autoencoder, build_vocoder
from opensora_lite.checkpoint.stage import resolve_weights_path
from opensora_lite.cli.common import hydra_entry
from opensora_lite.config.load import load_run_config
from opensora_lite.config.schema import SampleJobConfig
from opensora_lite.config.stages import stage_config
from opensora_lite.diffusion.conditioning import TASKS, V2V
from opensora_lite.diffusion.pipeline import AV_SAMPLING_TASKS, generate, generate_av, guidance_of
from opensora_lite.diffusion.sampler import guidance_branches
from opensora_lite.diffusion.sampling import (
    SampleContext,
    check_job,
    check_out,
    output_folder,
    read_frames,
    read_rows,
    references,
    sample_captions,
    sample_shape,
    save_samples,
)
from opensora_lite.errors import CheckpointError, ConfigError
from opensora_lite.eval.contact_sheet import save_contact_sheet
from opensora_lite.models.loading import load_into
from opensora_lite.models.spec import spec_for
from opensora_lite.parallel.local import LocalEngine
from opensora_lite.text.encoders import TextEncoders

# job keys that, when set, replace the run's `sample` settings
SAMPLE_KEYS = (
    "num_steps",
    "cfg_scale",
    "image_cfg_scale",
    "text_oscillation",
    "image_oscillation",
    "oscillation_warmup",
    "image_ramp",
    "audio_cfg_scale",
    "motion_score",
    "fps",
    "resolution",
    "num_frames",
    "aspect_ratio",
    "seed",
    "batch_size",
)


def sample(cfg: DictConfig) -> Path | None:
    """One osl-sample call (the composed `sample` config); returns the folder written (None on ranks
    other than the first)."""
    job: SampleJobConfig = OmegaConf.to_object(cfg)
    check_job(job)
    check_out(job)
    began = time.perf_counter()
    weights = resolve_weights_path(job.checkpoint, ema=job.ema, latest=True)
    run_cfg = load_run_config(weights)
    owner = next((p.name for p in weights.parents if p.name in run_cfg.curriculum.stages), None)
    if owner is not None:  # the stage's own autoencoder, patch and sampling (a distilled student's schedule)
        run_cfg = stage_config(run_cfg, owner)
    for key in SAMPLE_KEYS:
        if getattr(job, key) is not None:
            setattr(run_cfg.sample, key, getattr(job, key))
    rows = read_rows(job)
    sound = spec_for(run_cfg.model).audio_stream(run_cfg.model) is not None
    task = job.task or ("v2a" if job.video else "t2av" if sound else "i2v_head" if rows[0].reference else "t2v")
    if sound and task not in AV_SAMPLING_TASKS:
        raise ConfigError("task", f"{weights} is a model with sound: choose from {', '.join(AV_SAMPLING_TASKS)}")
    if not sound and task not in TASKS:
        unknown = "needs a model with sound (model.audio)" if task in AV_SAMPLING_TASKS else "is unknown"
        raise ConfigError("task", f"{task!r} {unknown}; choose from {', '.join(TASKS)}")
    if job.video and task != "v2a":
        raise ConfigError("video", f"only task v2a takes a video (task is {task})")
    if task == "v2a" and not (job.video and Path(job.video).is_file()):
        raise ConfigError("video", f"task v2a needs the video whose sound it generates: no such file {job.video}")
    engine = LocalEngine(job.parallel, job.device)  # a process group under torchrun, SP groups of sp_size
    try:
        return _sample(job, cfg, weights, run_cfg, rows, task, engine, began)
    finally:
        engine.shutdown()


def _sample(job, cfg, weights, run_cfg, rows, task, engine, began) -> Path | None:
    device = engine.device
    stage_name = weights.parent.parent.name if weights.parent.name == "final" else weights.parent.name
    spec = spec_for(run_cfg.model)
    state, fmt = spec.read_weights(weights)
    conditioned = (
        any(k.startswith(spec.optional_keys()[:1]) for k in state) if spec.capabilities.image_condition else False
    )
    model = spec.build(run_cfg.model, image_condition=conditioned)
    print(load_into(model, state, str(weights), spec.optional_keys()).summary())
    if task != "t2v" and task not in AV_SAMPLING_TASKS and not spec.has_image_condition(model):
        raise CheckpointError(f"{weights} has no image condition: sample {task} from an I2V stage")
    model.to(device).eval()
    if spec.capabilities.sequence_parallel:
        spec.set_sequence_parallel(model, engine.sp)
    elif engine.sp is not None:
        raise ConfigError("parallel.sp_size", f"model family {spec.family} has no sequence parallelism yet")
    ctx = SampleContext(
        run_cfg, TextEncoders(run_cfg.text_encoder, device), build_autoencoder(run_cfg.autoencoder).to(device), device
    )
    if task in AV_SAMPLING_TASKS:  # the run's audio autoencoder (its random weights drawn as training drew them)
        ctx.audio_ae = build_audio_autoencoder(run_cfg.audio_autoencoder, seed=run_cfg.run.seed).to(device).eval()
        ctx.vocoder = build_vocoder(run_cfg.audio_autoencoder).to(device).eval()
    stage = run_cfg.curriculum.stages.get(stage_name, next(iter(run_cfg.curriculum.stages.values())))
    shape = sample_shape(ctx, stage, prefix="")  # the job's keys: resolution=, num_frames=, aspect_ratio=
    if not ctx.ae.valid_num_frames(shape[0]):
        raise ConfigError("num_frames", f"{shape[0]} frames do not fit the autoencoder ({ctx.ae._frame_rule()})")
    v2v_frames = job.v2v_frames if job.v2v_frames is not None else stage.v2v_frames
    fps = run_cfg.sample.fps or run_cfg.data.target_fps

    samples = [(r, job.seed + j) for j in range(job.num_samples) for r in rows]
    prompts = [r.prompt for r, _ in samples]
    captions = sample_captions(ctx, prompts, shape)
    seeds = [s for _, s in samples]
    mine = list(range(engine.dp_rank, len(samples), engine.dp_size))  # this SP group's share of the samples
    if task in AV_SAMPLING_TASKS:
        given = given_video(job, shape, fps) if task == "v2a" else None
        if mine:
            part = generate_av(
                ctx, model, [captions[i] for i in mine], shape, [seeds[i] for i in mine], task,
                None if given is None else np.stack([given] * len(mine)),
            )  # fmt: skip
            part = list(zip(part.videos, part.audio, part.logmel))
    else:
        ref, ref_end = references([r for r, _ in samples], task, shape, ctx.ae, v2v_frames, fps)
        if mine:
            part = generate(
                ctx,
                model,
                [captions[i] for i in mine],
                shape,
                [seeds[i] for i in mine],
                None if ref is None else ref[mine],
                task,
                None if ref_end is None else ref_end[mine],
                v2v_frames,
            )
    lead = engine.sp is None or engine.sp.rank == 0  # one rank of each SP group reports its group's videos
    shares = engine.all_gather_object((mine, list(part)) if lead and mine else None)
    if not engine.is_main:
        return None
    placed: list = [None] * len(samples)
    for share in filter(None, shares):
        for i, sample_out in zip(*share):
            placed[i] = sample_out
    sound = task in AV_SAMPLING_TASKS
    videos = np.stack([p[0] for p in placed] if sound else placed)
    audio = [p[1] for p in placed] if sound else None
    rate = ctx.vocoder.sample_rate if sound else None

    out = output_folder(job, weights, run_cfg.curriculum.stages)
    paths = save_samples(videos, prompts, out, task, len(videos), fps, audio, rate)
    sheet = save_contact_sheet(
        out / "contact_sheet.png",
        videos,
        [f"[{task} seed {s}] {p}" for p, s in zip(prompts, seeds)],
        spectrograms=[p[2] for p in placed] if sound else None,
    )
    guidance = guidance_of(run_cfg.sample)
    conditioned_task = task not in ("t2v", *AV_SAMPLING_TASKS)  # the I2V/v2v condition gives frames
    settings = {
        "checkpoint": str(weights),
        "weights_format": fmt,
        "task": task,
        "frames_height_width": list(shape),
        "fps": fps,
        "v2v_frames": v2v_frames if task in V2V else None,
        "audio": {"sample_rate": rate, "channels": int(audio[0].shape[0]), "samples": int(audio[0].shape[1])}
        if sound
        else None,
        "guidance": asdict(guidance),
        "num_steps": run_cfg.sample.num_steps,
        # model forwards per clip: steps x guidance branches (a distilled student: its steps alone)
        "model_evaluations_per_clip": run_cfg.sample.num_steps * guidance_branches(guidance, conditioned_task),
        "caption_template": run_cfg.data.caption_template,
        "job": OmegaConf.to_container(cfg, resolve=True),
        "processes": engine.world_size,
        "sp_size": job.parallel.sp_size,
        "seconds": round(time.perf_counter() - began, 2),
        "samples": [
            {
                "prompt": r.prompt,
                "caption": c,
                "seed": s,
                "reference": r.reference,
                "reference_end": r.reference_end,
                "video": str(p),
            }
            for (r, s), c, p in zip(samples, captions, paths)
        ],
    }
    (out / "samples.json").write_text(json.dumps(settings, indent=2))
    for p in [*paths, sheet, out / "samples.json"]:
        print(p)
    print(f"samples: {out}")
    return out


def given_video(job, shape: tuple[int, int, int], fps: float) -> np.ndarray:
    """v2a's video: the first `frames` frames of `video` (read at the training frame rate, resized and
    centre-cropped as references are) -> uint8 [frames, H, W, 3]."""
    frames = read_frames(job.video, shape[1:], fps, key="video")
    if len(frames) < shape[0]:
        raise ConfigError("video", f"{job.video} has {len(frames)} frames at {fps:g} fps; sampling needs {shape[0]}")
    return frames[: shape[0]]


@hydra_entry("sample")
def main(cfg: DictConfig) -> None:
    sample(cfg)


if __name__ == "__main__":
    main()
