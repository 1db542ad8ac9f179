"""Sampling as a job: the prompts and references of an `osl-sample` call (a list, or a prompt file with
per-row references), read and strided like the loader reads training clips; the shape and captions a
clip is sampled at (the stage's buckets and the run's caption template); where the videos and their
record go. Shared by `osl-sample` and the trainer's evaluation (train/evaluation.py)."""

from __future__ import annotations

import csv
import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from opensora_lite.config.schema import Config, SampleJobConfig, StageConfig
from opensora_lite.data.buckets import bucket_size, parse_resolution
from opensora_lite.data.video import write_video
from opensora_lite.diffusion.conditioning import V2V
from opensora_lite.diffusion.pipeline import pixel_frames, template_captions
from opensora_lite.errors import ConfigError
from opensora_lite.text.encoders import TextEncoders


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


def sample_shape(rt, stage: StageConfig, prefix: str = "sample.") -> tuple[int, int, int]:
    """(frames, height, width) to sample at: config, else the stage's largest resolution and its
    most likely video length (1 for image-only stages).

    Any resolution the autoencoder and patch take works, in the stage's bucket table or not: sides are
    rounded to multiples of spatial factor x patch (as buckets are), and a resolution without a row in
    the table takes its frames from the largest resolution's row. A resolution that is not "<N>px" or
    is below one such multiple is one ConfigError naming `<prefix>resolution`."""
    s = rt.cfg.sample
    rows = {parse_resolution(r): row for r, row in stage.buckets.items()}  # keys checked at start-up
    largest = max(rows)
    px = largest if s.resolution is None else _resolution_px(s.resolution, prefix)
    sf, patch = rt.cfg.autoencoder.spatial_factor, rt.cfg.model.patch_size[1]
    multiple = sf * patch
    if px < multiple:
        raise ConfigError(
            f"{prefix}resolution",
            f"{s.resolution} is below the smallest size this model samples, {multiple}px "
            f"(autoencoder spatial factor {sf} x patch {patch}; sides are multiples of {multiple})",
        )
    if s.aspect_ratio <= 0:
        raise ConfigError(f"{prefix}aspect_ratio", f"{s.aspect_ratio} must be a positive height / width")
    videos = {n: p for n, (p, _) in rows.get(px, rows[largest]).items() if n > 1}
    frames = s.num_frames or (max(videos, key=lambda n: (videos[n], n)) if videos else 1)
    h, w = bucket_size(px, s.aspect_ratio, multiple)
    return frames, h, w


def _resolution_px(resolution: str, prefix: str) -> int:
    try:
        return parse_resolution(resolution)
    except ValueError:
        raise ConfigError(f"{prefix}resolution", f"{resolution!r} must look like '256px'") from None


def sample_captions(rt, prompts: list[str], shape: tuple[int, int, int]) -> list[str]:
    """Prompts through the run's caption template, with the sampling values of its fields."""
    cfg = rt.cfg
    fps = cfg.sample.fps or cfg.data.target_fps
    frames = shape[0]
    return template_captions(prompts, caption_template_for(cfg.data, frames), **sampling_fields(cfg, fps, shape))


def caption_template_for(data, frames: int) -> str:
    """The template training applied to clips of `frames` frames (images have their own, when set)."""
    if frames == 1 and data.image_caption_template is not None:
        return data.image_caption_template
    return data.caption_template


def sampling_fields(cfg, fps: float, shape: tuple[int, int, int]) -> dict:
    """The caption template's fields for a sampled clip: its shape, fps (also the clip's frame rate) and
    sample.motion_score standing for whichever motion score the template names."""
    from opensora_lite.data.captions import caption_fields

    frames, h, w = shape
    m = cfg.sample.motion_score
    meta = dict(fps=fps, num_frames=frames, width=w, height=h, duration=frames / fps)
    meta |= dict(motion_score=m, vmaf_motion=m) if m is not None else {}
    return caption_fields(meta, fps) | {"clip_fps": fps}


def save_samples(
    videos: np.ndarray, captions: list[str], folder: Path, prefix: str, limit: int, fps: float
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (video, caption) in enumerate(zip(videos[:limit], captions)):
        path = folder / f"{prefix}_{i:02d}_{caption.replace(' ', '_')[:60]}.mp4"
        write_video(path, video, fps)
        paths.append(path)
    return paths
