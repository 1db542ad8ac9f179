#!/usr/bin/env python3
"""The Shapes sound evaluator (eval/shapes_audio.py) on real clips: what it reads from rendered Shapes
clips with sound (the data generator's own draws, every colour, bouncing and not, at its sizes and
frame rates), written as mp4 with H.264 + AAC and decoded back with PyAV, beside what it reads when each
clip's video is paired with another clip's sound (what a model that ignores the pictures would score).

    python3 -m benchmarks.bench_shapes_audio              # 4 clips a colour and motion (48), ~10 s
    python3 -m benchmarks.bench_shapes_audio --per 1 --no-append
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.benchlib import heading, publish, table
from opensora_lite.config.schema import ShapesConfig
from opensora_lite.data.audio import extract_audio
from opensora_lite.data.synthetic import COLOURS, render_clip, shapes_media
from opensora_lite.data.video import decode_window
from opensora_lite.eval import shapes_audio

RATE = 16000
KEYS = ("pitch_acc", "bounce_rate", "click_rate", "click_rate_straight", "sync_error_ms", "sync_within_frame",
        "sync_error_shuffled_ms", "wall_gap_px")  # fmt: skip


def real_clips(per: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, dict]]:
    """`per` straight and `per` bouncing clips of each colour, through real mp4 files."""
    clips = []
    for n, colour in enumerate(COLOURS):
        cfg = ShapesConfig(colours=[colour], bounce=0.5, sound=True)
        rng, kinds = np.random.default_rng(seed + n), {"straight": [], "bounce": []}
        while min(len(v) for v in kinds.values()) < per:
            frames, meta = render_clip(rng, cfg)
            if len(kinds[meta["motion"]]) < per:
                kinds[meta["motion"]].append((shapes_media(frames, meta, cfg)["mp4"], meta))
        for mp4, meta in kinds["straight"] + kinds["bounce"]:
            video = decode_window(mp4, 0, meta["num_frames"], 1, (meta["height"], meta["width"]), seek=False)
            clips.append((video, extract_audio(mp4, RATE, "stereo", meta["num_frames"]) / 32768.0, meta))
    return clips


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per", type=int, default=4, help="clips per colour and motion")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    clips = real_clips(args.per, args.seed)
    videos, waves = [c[0] for c in clips], [c[1] for c in clips]
    targets = [{"colour": m["colour"], "bounce": m["motion"] == "bounce"} for _, _, m in clips]
    fps = [m["fps"] for _, _, m in clips]
    began = time.process_time()
    real = shapes_audio.score_sound(videos, waves, RATE, fps, targets)
    seconds = (time.process_time() - began) / len(clips)
    # each clip's video with the sound of a clip of another colour and another bounce (two places on
    # within a colour's block would be the same colour: a block's length on)
    shift = 2 * args.per
    heard_elsewhere = shapes_audio.score_sound(videos, waves[shift:] + waves[:shift], RATE, fps, targets)
    rows = [[k, f"{real.get('audio_' + k, float('nan')):.3f}", f"{heard_elsewhere.get('audio_' + k, float('nan')):.3f}"]
            for k in KEYS]  # fmt: skip
    command = f"python3 -m benchmarks.bench_shapes_audio --per {args.per}"
    lines = heading("Shapes sound evaluator on real clips", command)
    lines += [f"{len(clips)} clips ({args.per} straight and {args.per} bouncing a colour), sizes and frame rates "
              f"the generator draws; {seconds * 1000:.1f} ms of CPU a clip to read.", ""]  # fmt: skip
    lines += table(["figure", "each clip's own sound", "another clip's sound"], rows)
    publish(lines, not args.no_append)


if __name__ == "__main__":
    main()
