"""`osl-sample`: generate videos from a stage checkpoint, with the run's own config.

osl-sample checkpoint=runs/tiny_cpu/hires prompts='["a fast red circle moving left"]'
osl-sample checkpoint=runs/tiny_cpu/i2v image=ref.png prompts='["a fast red circle moving up"]'
osl-sample checkpoint=runs/os2/i2v_256px task=v2v_head reference=clip.mp4 prompt_file=prompts.txt \
    cfg_scale=7.5 image_cfg_scale=3 text_oscillation=true image_oscillation=true image_ramp=true motion_score=4

Writes one mp4 per sample, contact_sheet.png (a row per sample) and samples.json (the settings, and
per sample its caption, seed and file) into `out`; by default a new numbered folder per call,
<stage>/samples_cli/001, 002, ..., so a second call never overwrites the record of the first.
"""

from __future__ import annotations

import csv
import json
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from opensora_lite.autoencoders import build_autoencoder
from opensora_lite.cli.common import hydra_entry
from opensora_lite.config.schema import Config, SampleJobConfig
from opensora_lite.config.stages import stage_config
from opensora_lite.config.validate import ConfigError
from opensora_lite.diffusion.conditioning import TASKS, V2V
from opensora_lite.diffusion.pipeline import generate, guidance_of, pixel_frames
from opensora_lite.errors import CheckpointError
from opensora_lite.eval.contact_sheet import save_contact_sheet
from opensora_lite.models.flux_weights import load_into, read_flux_weights
from opensora_lite.models.mmdit import MMDiT
from opensora_lite.parallel.local import LocalEngine
from opensora_lite.text.encoders import TextEncoders
from opensora_lite.train.evaluation import sample_captions, sample_shape, save_samples
from opensora_lite.train.state import resolve_weights_path

# job keys that, when set, replace the run's `sample` settings
SAMPLE_KEYS = (
    "num_steps",
    "cfg_scale",
    "image_cfg_scale",
    "text_oscillation",
    "image_oscillation",
    "oscillation_warmup",
    "image_ramp",
    "motion_score",
    "fps",
    "resolution",
    "num_frames",
    "aspect_ratio",
    "seed",
    "batch_size",
)


@dataclass
class SampleContext:
    """The parts of a Runtime that sampling needs."""

    cfg: Config
    text: TextEncoders
    ae: torch.nn.Module
    device: torch.device

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.cfg.run.dtype == "bf16" else nullcontext()


@dataclass
class Row:
    """One prompt of the job and its references (paths)."""

    prompt: str
    reference: str | None = None
    reference_end: str | None = None


def run_config_for(weights: Path) -> Config:
    """The resolved config saved in the run directory that holds this checkpoint."""
    for parent in weights.parents:
        if (parent / "config.yaml").is_file():
            merged = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(parent / "config.yaml"))
            return OmegaConf.to_object(merged)
    raise CheckpointError(f"no config.yaml of a run found above {weights}")


def check_job(job: SampleJobConfig) -> None:
    """Counts that cannot be zero are refused rather than read as unset (num_frames=0 once fell back to
    the stage's default without a word)."""
    for key, least in (("num_frames", 1), ("v2v_frames", 1), ("batch_size", 1), ("num_samples", 1), ("num_steps", 1)):
        value = getattr(job, key)
        if value is not None and value < least:
            raise ConfigError(key, f"must be >= {least} (or leave it unset for the default), got {value}")
    if job.fps is not None and job.fps <= 0:
        raise ConfigError("fps", f"must be positive (or leave it unset: data.target_fps), got {job.fps}")


def check_out(job: SampleJobConfig) -> None:
    """An `out` given on the command line that already holds an earlier call's samples.json is refused
    (before any work): writing there would leave the earlier videos without a record."""
    if job.out and (Path(job.out) / "samples.json").exists():
        raise ConfigError(
            "out",
            f"{job.out} holds the samples of an earlier call (samples.json): choose another folder, or leave "
            "out unset (a new numbered folder per call)",
        )


def output_folder(job: SampleJobConfig, weights: Path, stages) -> Path:
    """Where a call writes: `out` as given, else the next free <stage>/samples_cli/<NNN>, created here
    (a concurrent call takes the next number)."""
    if job.out:
        return Path(job.out)
    stage_dir = next((p for p in weights.parents if p.name in stages), weights.parent.parent)
    base = stage_dir / "samples_cli"
    base.mkdir(parents=True, exist_ok=True)
    n = max((int(p.name) for p in base.iterdir() if p.name.isdigit()), default=0)
    while True:
        n += 1
        try:
            (base / f"{n:03d}").mkdir()
            return base / f"{n:03d}"
        except FileExistsError:
            continue


def read_frames(path: str, size: tuple[int, int], target_fps: float | None = None) -> np.ndarray:
    """Every frame of an image or video (at the training frame rate: strided like the loader), resized
    and centre-cropped to size -> uint8 [F, H, W, 3]."""
    import av

    from opensora_lite.data.video import frame_rotation, frame_to_rgb, resize_crop_size, temporal_stride, upright_size

    if not Path(path).is_file():
        raise ConfigError("reference", f"no such file {path}")
    frames = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = float(stream.average_rate or 0)
            stride = temporal_stride(rate, target_fps) if rate and target_fps else 1
            for i, frame in enumerate(container.decode(video=0)):
                if i % stride:
                    continue
                rotation = frame_rotation(frame)
                nh, nw, top, left = resize_crop_size(*upright_size(frame.height, frame.width, rotation), size)
                rgb = frame_to_rgb(frame, (nh, nw), rotation)
                frames.append(rgb[top : top + size[0], left : left + size[1]])
    except (av.error.FFmpegError, IndexError) as exc:
        raise ConfigError("reference", f"cannot decode {path}: {exc}") from None
    if not frames:
        raise ConfigError("reference", f"{path} has no video frames")
    return np.stack(frames)


def read_first_frame(path: str, size: tuple[int, int]) -> np.ndarray:
    return read_frames(path, size)[0]


def read_rows(job: SampleJobConfig) -> list[Row]:
    """The prompts: `prompt_file` (.txt one a line; .jsonl / .csv rows with prompt or text, and optional
    reference / reference_end, relative to the file) or `prompts`, with the job's references."""
    default_ref = job.reference or job.image
    if not job.prompt_file:
        return [Row(p, default_ref, job.reference_end) for p in job.prompts]
    path = Path(job.prompt_file)
    if not path.is_file():
        raise ConfigError("prompt_file", f"no such file {path}")
    if path.suffix in (".jsonl", ".csv"):
        with path.open(newline="") as fh:
            records = (
                [json.loads(line) for line in fh if line.strip()]
                if path.suffix == ".jsonl"
                else list(csv.DictReader(fh))
            )
        rows = []
        for n, rec in enumerate(records, 1):
            prompt = rec.get("prompt") or rec.get("text")
            if not prompt:
                raise ConfigError("prompt_file", f"{path} row {n} has no prompt (or text) field")

            ref = _relative(path, rec.get("reference") or rec.get("ref")) or default_ref
            rows.append(Row(prompt, ref, _relative(path, rec.get("reference_end")) or job.reference_end))
    else:
        rows = [
            Row(line.strip(), default_ref, job.reference_end) for line in path.read_text().splitlines() if line.strip()
        ]
    if not rows:
        raise ConfigError("prompt_file", f"{path} holds no prompts")
    return rows


def _relative(listing: Path, value: str | None) -> str | None:
    """A reference path of a prompt file's row, relative to the file."""
    if not value:
        return None
    return value if Path(value).is_absolute() else str(listing.parent / value)


def references(rows: list[Row], task: str, shape: tuple, ae, v2v_frames: int, fps: float):
    """uint8 references for the rows [N, F, H, W, 3] (and the i2v_loop ends), the frames each task
    needs: i2v the first and last frame; v2v the first / last frames of its given latent frames."""
    if task == "t2v":
        return None, None
    size = shape[1:]
    if any(r.reference is None for r in rows):
        raise ConfigError("reference", f"task {task} needs a reference image or video for every prompt")
    refs, ends = [], []
    for r in rows:
        frames = read_frames(r.reference, size, fps)
        if task in V2V:
            lat_t = ae.latent_frames(shape[0]) if ae.valid_num_frames(shape[0]) else shape[0]
            n = pixel_frames(ae, max(1, min(v2v_frames, lat_t - 1)))
            if len(frames) < n:
                raise ConfigError("reference", f"{r.reference} has {len(frames)} frames; {task} needs {n}")
            refs.append(frames[:n] if task == "v2v_head" else frames[-n:])
        else:
            refs.append(frames[[0, -1]])
            ends.append(read_frames(r.reference_end, size, fps)[[0, -1]] if r.reference_end else frames[[0, -1]])
    return np.stack(refs), (np.stack(ends) if ends else None)


def sample(cfg: DictConfig) -> Path | None:
    """One osl-sample call (the composed `sample` config); returns the folder written (None on ranks
    other than the first)."""
    job: SampleJobConfig = OmegaConf.to_object(cfg)
    check_job(job)
    check_out(job)
    began = time.perf_counter()
    weights = resolve_weights_path(job.checkpoint, ema=job.ema, latest=True)
    run_cfg = run_config_for(weights)
    for key in SAMPLE_KEYS:
        if getattr(job, key) is not None:
            setattr(run_cfg.sample, key, getattr(job, key))
    rows = read_rows(job)
    task = job.task or ("i2v_head" if rows[0].reference else "t2v")
    if task not in TASKS:
        raise ConfigError("task", f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    engine = LocalEngine(job.parallel, job.device)  # a process group under torchrun, SP groups of sp_size
    try:
        return _sample(job, cfg, weights, run_cfg, rows, task, engine, began)
    finally:
        engine.shutdown()


def _sample(job, cfg, weights, run_cfg, rows, task, engine, began) -> Path | None:
    device = engine.device
    state, fmt = read_flux_weights(weights)
    stage_name = weights.parent.parent.name if weights.parent.name == "final" else weights.parent.name
    owner = next((p.name for p in weights.parents if p.name in run_cfg.curriculum.stages), None)
    if owner is not None:  # the stage's own autoencoder and patch (stage.autoencoder)
        run_cfg = stage_config(run_cfg, owner)
    model = MMDiT(run_cfg.model, image_condition="cond_in.weight" in state)
    print(load_into(model, state, str(weights)).summary())
    if task != "t2v" and not model.image_condition:
        raise CheckpointError(f"{weights} has no image condition (cond_in): sample {task} from an I2V stage")
    model.to(device).eval()
    model.set_sequence_parallel(engine.sp)
    ctx = SampleContext(
        run_cfg, TextEncoders(run_cfg.text_encoder, device), build_autoencoder(run_cfg.autoencoder).to(device), device
    )
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
    ref, ref_end = references([r for r, _ in samples], task, shape, ctx.ae, v2v_frames, fps)
    mine = list(range(engine.dp_rank, len(samples), engine.dp_size))  # this SP group's share of the samples
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
    shares = engine.all_gather_object((mine, part) if lead and mine else None)
    if not engine.is_main:
        return None
    placed: list = [None] * len(samples)
    for share in filter(None, shares):
        for i, video in zip(*share):
            placed[i] = video
    videos = np.stack(placed)

    out = output_folder(job, weights, run_cfg.curriculum.stages)
    paths = save_samples(videos, prompts, out, task, len(videos), fps)
    sheet = save_contact_sheet(
        out / "contact_sheet.png", videos, [f"[{task} seed {s}] {p}" for p, s in zip(prompts, seeds)]
    )
    settings = {
        "checkpoint": str(weights),
        "weights_format": fmt,
        "task": task,
        "frames_height_width": list(shape),
        "fps": fps,
        "v2v_frames": v2v_frames if task in V2V else None,
        "guidance": asdict(guidance_of(run_cfg.sample)),
        "num_steps": run_cfg.sample.num_steps,
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


@hydra_entry("sample")
def main(cfg: DictConfig) -> None:
    sample(cfg)


if __name__ == "__main__":
    main()
