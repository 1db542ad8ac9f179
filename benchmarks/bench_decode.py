#!/usr/bin/env python3
"""Clip decoding throughput: our windowed decoder against decoding the whole clip and then cropping.

Makes 10-second 720p H.264 clips (30 fps, a keyframe every 2 s, B-frames: what cameras and web
encoders produce), then takes random 33-frame windows at Open-Sora's stride (ceil(30/24) = 2, so each
window spans 65 source frames) resized and centre-cropped to 256 x 256, three ways, in one process on
one core, one method after the other (each row is published when it is measured):

- whole clip: decode every frame to full-size RGB, pick the window's frames, resize with an
  antialiased filter and crop (the read-everything-then-transform approach);
- windowed, no seek: decode from the first frame, convert only wanted frames at the reduced size,
  stop after the window;
- windowed (ours, the loader's path): the same after seeking to the keyframe before the window.

    python3 -m benchmarks.bench_decode              # ~3 min on 2 CPU cores, appends to docs/benchmarks.md
    python3 -m benchmarks.bench_decode --clips 1 --windows 2 --seconds 3 --no-append
"""

from __future__ import annotations

import argparse
import io
import time

import av
import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.benchlib import Budget, Report
from opensora_lite.data.video import decode_window, encode_mp4, resize_crop_size, temporal_stride


def make_clip(seconds: float, fps: int, height: int, width: int, seed: int) -> bytes:
    """Moving gradients and squares: motion everywhere, so the encoder does real work."""
    rng = np.random.default_rng(seed)
    n = int(seconds * fps)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = np.empty((n, height, width, 3), np.uint8)
    boxes = rng.integers(0, min(height, width) // 2, size=(6, 2))
    speeds = rng.integers(-6, 7, size=(6, 2))
    for t in range(n):
        frames[t, ..., 0] = ((xx + 4 * t) % 256).astype(np.uint8)
        frames[t, ..., 1] = ((yy + 2 * t) % 256).astype(np.uint8)
        frames[t, ..., 2] = ((xx + yy) / 8 % 256).astype(np.uint8)
        for (y, x), (dy, dx) in zip(boxes, speeds):
            y0, x0 = (y + dy * t) % (height - 80), (x + dx * t) % (width - 80)
            frames[t, y0 : y0 + 80, x0 : x0 + 80] = 255 - frames[t, y0 : y0 + 80, x0 : x0 + 80]
    return encode_mp4(frames, fps, crf=23, gop=2 * fps, bframes=True)


def whole_clip(data: bytes, start: int, n: int, stride: int, size: tuple[int, int]) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    window = torch.from_numpy(frames[start : start + n * stride : stride]).permute(0, 3, 1, 2).float()
    nh, nw, top, left = resize_crop_size(window.shape[2], window.shape[3], size)
    resized = F.interpolate(window, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    cropped = resized[:, :, top : top + size[0], left : left + size[1]]
    return cropped.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=3)
    p.add_argument("--windows", type=int, default=4, help="random windows per clip and method")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--smoke", action="store_true", help="tiny: checks the script runs (the GPU suite's --smoke)")
    p.add_argument("--no-append", action="store_true")
    a = p.parse_args()
    if a.smoke:
        a.clips, a.windows, a.seconds, a.frames = 1, 1, 1.0, 9
    torch.set_num_threads(1)
    fps, size = 30, (256, 256)
    stride = temporal_stride(fps, 24.0)
    clips = [make_clip(a.seconds, fps, 720, 1280, seed) for seed in range(a.clips)]
    total = int(a.seconds * fps)
    span = (a.frames - 1) * stride + 1
    rng = np.random.default_rng(0)
    windows = [(c, int(rng.integers(0, total - span + 1))) for c in range(a.clips) for _ in range(a.windows)]
    methods = {
        "whole clip, then resize + crop": lambda d, s: whole_clip(d, s, a.frames, stride, size),
        "windowed, no seek": lambda d, s: decode_window(d, s, a.frames, stride, size, seek=False),
        "windowed + keyframe seek (ours)": lambda d, s: decode_window(d, s, a.frames, stride, size),
    }
    mb = sum(len(c) for c in clips) / len(clips) / 2**20
    report = Report("Clip decoding, one core", "python3 -m benchmarks.bench_decode", append=not a.no_append)
    report.text(
        f"Input: {a.clips} synthetic {a.seconds:g}-s 1280x720 H.264 clips, {fps} fps, keyframe every {2 * fps} "
        f"frames, B-frames, {mb:.1f} MiB each. Output: {a.frames} frames at stride {stride} ({span} source "
        f"frames) to {size[0]}x{size[1]}, {len(windows)} random windows per method, torch and FFmpeg on 1 "
        f"thread; one method after the other, each row published when measured. PyAV {av.__version__}, torch "
        f"{torch.__version__}."
    )
    report.table(["method", "clips/s per core", "s per clip", "vs whole clip"])
    budget, base, seconds = Budget(), None, None
    for name, fn in methods.items():
        if not budget.fits(seconds):  # (the method before it, measured: the first is the slowest)
            report.row([name, budget.why_not(seconds), "", ""])
            continue
        seconds = 0.0
        for c, start in windows:
            t0 = time.perf_counter()
            out = fn(clips[c], start)
            seconds += time.perf_counter() - t0
            assert out.shape == (a.frames, *size, 3), out.shape
        rate = len(windows) / seconds
        base = base or rate
        report.row(
            [name, f"{rate:.3f}", f"{seconds / len(windows):.2f}", f"{rate / base:.2f}"],
            clips_per_s=rate, s_per_clip=seconds / len(windows),
        )  # fmt: skip
    report.close()


if __name__ == "__main__":
    main()
