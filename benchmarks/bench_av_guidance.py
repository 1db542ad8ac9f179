#!/usr/bin/env python3
"""The audio figures of an audio_video stage's checkpoint at several audio guidance scales: the stage's
own end-of-stage evaluation with sound (train/evaluation_av.py, eval.kind=shapes), run again from its
final weights with `sample.audio_cfg_scale` set to each scale (the video's cfg_scale unchanged).

    python3 -m benchmarks.bench_av_guidance runs/av/t2av --scales 1 4 --no-append
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.benchlib import heading, publish, table
from opensora_lite.autoencoders import build_autoencoder
from opensora_lite.autoencoders.audio import build_audio_autoencoder, build_vocoder
from opensora_lite.checkpoint.stage import resolve_weights_path
from opensora_lite.config.load import load_run_config
from opensora_lite.config.stages import stage_config
from opensora_lite.diffusion.sampling import SampleContext
from opensora_lite.models.loading import load_into
from opensora_lite.models.spec import spec_for
from opensora_lite.text.encoders import TextEncoders
from opensora_lite.train.evaluation_av import evaluate_av_stage

KEYS = ("colour_acc", "direction_acc", "audio_pitch_acc", "audio_bounce_rate", "audio_click_rate",
        "audio_click_rate_straight", "audio_sync_error_median_ms", "audio_sync_error_shuffled_median_ms",
        "audio_sync_error_ms", "audio_sync_error_shuffled_ms", "audio_sync_within_frame", "v2a_pitch_acc",
        "v2a_click_rate", "v2a_sync_error_median_ms", "v2a_sync_error_shuffled_median_ms",
        "v2a_sync_within_frame")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stage_dir", help="an audio_video stage directory (runs/<run>/<stage>)")
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 4.0])
    ap.add_argument("--repeats", type=int, default=None, help="eval.repeats (default: the run's)")
    ap.add_argument("--v2a-clips", type=int, default=None, help="eval.v2a_clips (default: the run's)")
    ap.add_argument("--seed", type=int, default=None, help="sample.seed (default: the run's)")
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    stage_dir = Path(args.stage_dir)
    weights = resolve_weights_path(str(stage_dir), ema=False, latest=True)
    cfg = stage_config(load_run_config(weights), stage_dir.name)
    spec = spec_for(cfg.model)
    model = spec.build(cfg.model)
    load_into(model, spec.read_weights(weights)[0], str(weights), spec.optional_keys())
    device = torch.device("cpu")
    rt = SampleContext(cfg, TextEncoders(cfg.text_encoder, device), build_autoencoder(cfg.autoencoder), device)
    rt.audio_ae = build_audio_autoencoder(cfg.audio_autoencoder, seed=cfg.run.seed).eval()
    rt.vocoder = build_vocoder(cfg.audio_autoencoder).eval()
    stage = cfg.curriculum.stages[stage_dir.name]
    if args.repeats is not None:
        cfg.eval.repeats = args.repeats
    if args.v2a_clips is not None:
        cfg.eval.v2a_clips = args.v2a_clips
    if args.seed is not None:
        cfg.sample.seed = args.seed
    rows = []
    for scale in args.scales:
        cfg.sample.audio_cfg_scale = scale
        began = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            metrics, _, _ = evaluate_av_stage(rt, model, stage, Path(tmp) / "samples")
        rows.append([f"{scale:g}", *(f"{metrics[k]:.3f}" if k in metrics else "-" for k in KEYS),
                     f"{time.perf_counter() - began:.0f}"])  # fmt: skip
    command = f"python3 -m benchmarks.bench_av_guidance {args.stage_dir} --scales {' '.join(map(str, args.scales))}"
    command += f" --repeats {args.repeats}" if args.repeats is not None else ""
    command += f" --v2a-clips {args.v2a_clips}" if args.v2a_clips is not None else ""
    command += f" --seed {args.seed}" if args.seed is not None else ""
    lines = heading("Audio guidance scale on an audio_video checkpoint", command)
    lines += [f"video cfg_scale {cfg.sample.cfg_scale:g}, {cfg.sample.num_steps} steps, eval.repeats "
              f"{cfg.eval.repeats}, eval.v2a_clips {cfg.eval.v2a_clips}.", ""]  # fmt: skip
    lines += table(["audio_cfg_scale", *KEYS, "seconds"], rows)
    publish(lines, not args.no_append)


if __name__ == "__main__":
    main()
