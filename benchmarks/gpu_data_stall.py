#!/usr/bin/env python3
"""Data-stall fraction at stage-1 rates: the real loader, real H.264 decoding, a timed stand-in step.

Writes WebDataset shards of 720p H.264 clips (24 fps, a keyframe every 2 s, B-frames) into a temporary
folder, and streams them through the training loader (BucketedVideoStream + build_loader: shard
reading, keyframe-seeking window decode, resize and crop to a 256px bucket of 129 frames, collation)
into a stand-in step that sleeps for one stage-1 training step per batch: the analytic FLOPs of the
full Flux-dev MMDiT (19 + 38 blocks) on that clip, over the GPU's datasheet peak at an assumed MFU
(--mfu; or --step-ms). On a GPU each batch is also copied to the device, as the trainer does. For each
worker count, the fraction of wall time the step waited for data (the trainer's `data_stall_frac`),
after the first batch (worker start-up, reported apart).

    python3 -m benchmarks.gpu_data_stall                      # GPU machine: ~50 s, appends to docs/benchmarks.md
    python3 -m benchmarks.gpu_data_stall --smoke --no-append  # tiny clips on CPU: checks the script runs
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.bench_decode import make_clip
from benchmarks.benchlib import Budget, Report, parse_gpu_args
from opensora_lite.autoencoders.base import latent_frame_count
from opensora_lite.data.buckets import BucketTable
from opensora_lite.data.loader import BucketedVideoStream, build_loader, frames_on_device
from opensora_lite.data.video import temporal_stride
from opensora_lite.models.flops import peak_tflops
from opensora_lite.models.flux.flops import mmdit_flops
from opensora_lite.models.flux.model import MMDiTConfig

ASPECTS = [0.5625, 0.75, 1.0, 1.3333, 1.7778]  # data.aspect_ratios' default


def write_shards(folder: Path, clip: bytes, meta: dict, shards: int, per_shard: int) -> list[str]:
    """`shards` tar files of `per_shard` samples, all the same clip under distinct keys (the decoding is the
    work; encoding one clip is the slow part of making data)."""
    import webdataset as wds

    urls = []
    for s in range(shards):
        path = folder / f"clips-{s:04d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(per_shard):
                sink.write(
                    {"__key__": f"clip{s:04d}{i:03d}", "mp4": clip, "json": json.dumps(meta).encode(), "txt": b"a clip"}
                )
        urls.append(str(path))
    return urls


def stage1_step_s(bucket: tuple[int, int], frames: int, text_tokens: int, mfu: float, device) -> float | None:
    """Seconds of one training step of the full Flux-dev MMDiT on one clip (causal 4x8x8 VAE, 2x2 patches)."""
    peak = peak_tflops(device, "bf16")
    if peak is None:
        return None
    tokens = latent_frame_count(frames, 4, True) * (bucket[0] // 16) * (bucket[1] // 16)
    return mmdit_flops(MMDiTConfig(), tokens, text_tokens).train / (peak * 1e12 * mfu)


def run(stream: BucketedVideoStream, workers: int, steps: int, step_s: float, device) -> tuple[list[str], dict]:
    loader = build_loader(stream, workers, prefetch_factor=2, pin_memory=device.type == "cuda")
    began = time.perf_counter()
    it = iter(loader)
    first = next(it)
    startup = time.perf_counter() - began
    wait, start = 0.0, time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = next(it)
        video = frames_on_device(batch["video"], device)  # uint8 to the device, normalised there (the trainer's way)
        if device.type == "cuda":
            torch.cuda.synchronize()
        wait += time.perf_counter() - t0
        time.sleep(step_s)  # the GPU's step: the main process waits on the device
    wall = time.perf_counter() - start
    del it, loader  # ends the workers
    assert video.shape == first["video"].shape
    cells = [str(workers), f"{startup:.1f}", f"{wait / steps * 1000:.0f}", f"{steps / wall:.3g}", f"{wait / wall:.3f}"]
    return cells, dict(workers=workers, first_batch_s=startup, wait_s=wait / steps, steps_per_s=steps / wall,
                       data_stall_frac=wait / wall)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, nargs="+", help="data.num_workers settings (default 1 2 4 ... cores/2)")
    p.add_argument("--steps", type=int, default=6, help="timed steps per setting, after the first batch")
    p.add_argument("--frames", type=int, default=129)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--source", type=int, nargs=2, default=[720, 1280], help="source clip height width")
    p.add_argument("--seconds", type=float, default=6.0, help="source clip length at 24 fps")
    p.add_argument("--text-tokens", type=int, default=512)
    p.add_argument("--mfu", type=float, default=0.4, help="assumed MFU of the stage-1 step")
    p.add_argument("--step-ms", type=float, help="stand-in step time (default: the stage-1 step from --mfu)")
    a, device = parse_gpu_args(p)
    cuda = device.type == "cuda"
    if a.smoke:
        a.workers, a.steps, a.frames, a.resolution, a.source, a.seconds = [1, 2], 2, 9, 32, [48, 64], 0.5
        a.step_ms = a.step_ms or 20.0
    cores = os.cpu_count() or 1
    a.workers = a.workers or [w for w in (1, 2, 4, 8, 16) if w <= max(1, cores // 2)]
    torch.set_num_threads(1)
    fps = 24
    table_ = BucketTable({f"{a.resolution}px": {a.frames: [1.0, 1]}}, ASPECTS, 16)
    bucket = table_.assign(a.source[0], a.source[1], a.frames, random.Random(0))
    step_s = (
        a.step_ms / 1000
        if a.step_ms
        else stage1_step_s((bucket.height, bucket.width), a.frames, a.text_tokens, a.mfu, device)
    )
    if step_s is None:
        raise SystemExit("no datasheet peak for this device: give --step-ms")
    budget = Budget(a.budget_s)  # (the clip's encoding counts too)
    clip = make_clip(a.seconds, fps, a.source[0], a.source[1], seed=0)
    meta = {"num_frames": int(a.seconds * fps), "fps": fps, "height": a.source[0], "width": a.source[1]}
    gpu = torch.cuda.get_device_name() if cuda else "CPU (smoke)"
    stride = temporal_stride(fps, 24.0)
    how = (
        f"{a.step_ms:g} ms given"
        if a.step_ms
        else f"full Flux-dev MMDiT, analytic FLOPs at {a.mfu:.0%} MFU of the bf16 peak"
    )
    report = Report(f"Data stall at stage-1 rates, one {gpu}", "python3 -m benchmarks.gpu_data_stall",
                    append=not a.no_append)  # fmt: skip
    report.text(
        f"Clips: {a.source[1]}x{a.source[0]} H.264, {fps} fps, {len(clip) / 2**20:.1f} MiB; windows of {a.frames} "
        f"frames at stride {stride} to the {bucket.height}x{bucket.width} bucket ({a.resolution}px), batch 1, "
        f"{cores} cores. Stand-in step {step_s * 1000:.0f} ms ({how}); {a.steps} timed steps per setting; frames "
        f"travel as uint8 and are normalised on the device. A setting starts only when the longest one before it "
        f"fits before the cap. torch {torch.__version__}."
    )
    report.table(["num_workers", "first batch s", "wait ms per step", "steps/s", "data_stall_frac"])
    took: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        urls = write_shards(Path(tmp), clip, meta, 2 * max(a.workers), 4)
        for workers in a.workers:
            estimate = max(took, default=None)
            if not budget.fits(estimate):  # the table still comes out inside the suite's cap
                report.row([str(workers), budget.why_not(estimate), "", "", ""])
                continue
            began = time.perf_counter()
            stream = BucketedVideoStream(urls, table_, float(fps), seed=0, shuffle_buffer=4)
            cells, data = run(stream, workers, a.steps, step_s, device)
            report.row(cells, **data)
            took.append(time.perf_counter() - began)
    report.close()


if __name__ == "__main__":
    main()
