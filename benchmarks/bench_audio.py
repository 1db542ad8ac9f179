#!/usr/bin/env python3
"""Sound in the data path: what an audio window costs beside its video window, and what the stored track
weighs in a shard.

Makes 10-second 640x360 H.264 clips at 30 fps with a 48 kHz stereo AAC track (what cameras and web
video carry), then for random 33-frame windows at Open-Sora's stride (ceil(30/24) = 2) measures, in one
process on one core:

- the video window (the loader's seek + windowed decode to 256 x 256), for scale;
- its audio at 16 kHz stereo read from the stored track (`<key>.wav`, what `osl-data` writes with
  videos.audio.enabled): a seek into PCM, no decoding;
- the same audio decoded from the container (the loader's path for shards without a stored track):
  the whole track decoded, resampled, aligned, then cut;
- ingest's share: decoding, resampling and aligning one clip's track (once per clip).

    python3 -m benchmarks.bench_audio              # ~1 min on 2 CPU cores, appends to docs/benchmarks.md
    python3 -m benchmarks.bench_audio --clips 1 --windows 2 --no-append
"""

from __future__ import annotations

import argparse
import time

import av
import numpy as np
import torch

from benchmarks.benchlib import heading, publish, table
from opensora_lite.data.audio import audio_window, encode_wav, extract_audio, window_samples
from opensora_lite.data.video import decode_window, encode_mp4, temporal_stride

RATE = 16000


def make_clip(seconds: float, fps: int, seed: int) -> bytes:
    """Moving gradients (the encoder does real work) and a two-tone stereo track with noise."""
    rng = np.random.default_rng(seed)
    n, h, w = int(seconds * fps), 360, 640
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        frames[t, ..., 0] = ((xx + 4 * t) % 256).astype(np.uint8)
        frames[t, ..., 1] = ((yy + 2 * t) % 256).astype(np.uint8)
        frames[t, ..., 2] = ((xx + yy) / 8 % 256).astype(np.uint8)
    s = np.arange(int(seconds * 48000)) / 48000
    left = 0.2 * np.sin(2 * np.pi * 220 * s) + 0.05 * rng.standard_normal(s.size)
    right = 0.2 * np.sin(2 * np.pi * 330 * s) + 0.05 * rng.standard_normal(s.size)
    sound = np.stack([left, right]).astype(np.float32)
    return encode_mp4(frames, fps, crf=23, gop=2 * fps, bframes=True, audio=sound, sample_rate=48000)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=2)
    p.add_argument("--windows", type=int, default=4, help="random windows per clip")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--no-append", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)
    fps, size = 30, (256, 256)
    stride = temporal_stride(fps, 24.0)
    clips = [make_clip(a.seconds, fps, seed) for seed in range(a.clips)]
    t0 = time.perf_counter()
    tracks = [extract_audio(c, RATE, "stereo", int(a.seconds * fps)) for c in clips]
    ingest = (time.perf_counter() - t0) / len(clips)
    wavs = [encode_wav(t, RATE) for t in tracks]
    span = (a.frames - 1) * stride + 1
    rng = np.random.default_rng(0)
    windows = [
        (c, int(rng.integers(0, int(a.seconds * fps) - span + 1))) for c in range(a.clips) for _ in range(a.windows)
    ]
    methods = {
        "video window (seek + windowed decode)": lambda c, s: decode_window(clips[c], s, a.frames, stride, size),
        "audio window from the stored WAV": lambda c, s: audio_window(
            None, wavs[c], RATE, "stereo", s, a.frames, stride, fps
        )[0],
        "audio window decoded from the mp4": lambda c, s: audio_window(
            clips[c], None, RATE, "stereo", s, a.frames, stride, fps
        )[0],
    }
    seconds = dict.fromkeys(methods, 0.0)
    count = window_samples(0, a.frames, stride, fps, RATE)[1]
    for c, start in windows:  # methods interleaved per window: noise hits all alike
        for name, fn in methods.items():
            t0 = time.perf_counter()
            out = fn(c, start)
            seconds[name] += time.perf_counter() - t0
            assert out.shape[0] == a.frames or out.shape == (2, count), out.shape
    rows = [[name, f"{1000 * s / len(windows):.2f}"] for name, s in seconds.items()]
    rows.append(["ingest: decode + resample + align one clip's track (once)", f"{1000 * ingest:.1f}"])
    wav_rate = sum(len(w) for w in wavs) / len(wavs) / a.seconds / 1024
    lines = heading("Audio windows beside video windows, one core", "python3 -m benchmarks.bench_audio")
    lines += [
        f"Input: {a.clips} synthetic {a.seconds:g}-s 640x360 H.264 clips, {fps} fps, 48 kHz stereo AAC. Windows: "
        f"{a.frames} frames at stride {stride} ({span} source frames, {count} samples at {RATE} Hz stereo), "
        f"{len(windows)} random windows. The stored WAV weighs {wav_rate:.0f} KiB a second of clip. "
        f"PyAV {av.__version__}, torch {torch.__version__}.",
        "",
    ]
    lines += table(["what", "ms"], rows)
    publish(lines, not a.no_append)


if __name__ == "__main__":
    main()
