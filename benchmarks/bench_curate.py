#!/usr/bin/env python3
"""osl-curate throughput: clips per second per core for each stage, on a corpus of real encoded clips.

Makes a corpus of H.264 clips (default 24 sources of 4 s at 360 x 640, 24 fps: panning shapes, still
shots, blurred shots, burnt-in captions, hard cuts, re-encoded copies), then, in one process on one core
(OMP_NUM_THREADS=1, torch 1 thread), times each part of the pipeline on every clip:

- read + split: one decode at thumbnail size through PySceneDetect's ContentDetector (per source);
- sample + cut: the second decode for the sampled frames, cut windows re-encoded (per source);
- motion: our Farneback flow alone, and ingest's luma difference + VMAF motion (one full decode: the shard
  json, the caption fields);
- blur, OCR (rapidocr, its bundled weights), dedup hash;
- aesthetic: CLIP ViT-L/14 (random weights, the real architecture's cost) + the MLP head, on --aesthetic-clips;
- end to end: osl-curate's own `run` over the corpus, one rank, one worker (every stage but aesthetic).

It also compares the motion measures on the same clips (Spearman rank correlation; still shots against
moving ones) and estimates the cost of 1M such clips on a 64-core node. Prints tables and appends them to
docs/benchmarks.md (`--no-append`: print only).

    python3 -m benchmarks.bench_curate                 # ~3 min on 2 cores
    python3 -m benchmarks.bench_curate --sources 6 --aesthetic-clips 1 --no-append
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.benchlib import heading, publish, table


def scene(seed: int, n: int, h: int, w: int, speed: float = 3.0, blur: float = 0.0, text: str | None = None):
    """uint8 [n, h, w, 3]: coloured discs and boxes on a plain ground panning `speed` px a frame; blurred
    (Gaussian, sigma `blur`); with a caption burnt in (cv2.putText). tests/test_curate.py uses it too."""
    import cv2

    rng = np.random.default_rng(seed)
    world = np.zeros((h, w * 3, 3), np.uint8)
    world[:] = rng.integers(30, 220, 3)
    scale = h / 96
    for _ in range(int(40 * scale)):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y = int(rng.integers(0, w * 3)), int(rng.integers(0, h))
        if rng.random() < 0.5:
            cv2.circle(world, (x, y), int(rng.integers(4, 16) * scale), colour, -1)
        else:
            size = (int(rng.integers(6, 24) * scale), int(rng.integers(6, 24) * scale))
            cv2.rectangle(world, (x, y), (x + size[0], y + size[1]), colour, -1)
    frames = []
    for t in range(n):
        x = int(round(t * speed)) % (w * 2)
        f = np.ascontiguousarray(world[:, x : x + w])
        if blur:
            f = cv2.GaussianBlur(f, (0, 0), blur)
        if text:
            cv2.putText(f, text, (int(6 * scale), int(60 * scale)), cv2.FONT_HERSHEY_SIMPLEX, 1.1 * scale,
                        (255, 255, 255), max(2, int(3 * scale)))  # fmt: skip
        frames.append(f)
    return np.stack(frames)


KINDS = ("moving", "static", "blurred", "text", "cut", "copy")


def corpus(folder: Path, sources: int, seconds: float, fps: int, h: int, w: int) -> list[Path]:
    from opensora_lite.data.video import encode_mp4

    n = int(seconds * fps)
    paths = []
    for i in range(sources):
        kind = KINDS[i % len(KINDS)]
        seed = 100 + i
        if kind == "moving":
            frames = scene(seed, n, h, w, speed=3 * h / 96)
        elif kind == "static":
            frames = scene(seed, n, h, w, speed=0)
        elif kind == "blurred":
            frames = scene(seed, n, h, w, speed=3 * h / 96, blur=3.0 * h / 96)
        elif kind == "text":
            frames = scene(seed, n, h, w, speed=3 * h / 96, text="SALE 50")
        elif kind == "cut":
            half = n // 2
            frames = np.concatenate([scene(seed, half, h, w, 6), scene(seed + 1000, n - half, h, w, 6)])
        else:  # a re-encoded copy of the moving clip before it
            frames = scene(seed - 5, n, h, w, speed=3 * h / 96)
        path = folder / f"{i:03d}_{kind}.mp4"
        path.write_bytes(encode_mp4(frames, fps, crf=32 if kind == "copy" else 23))
        path.with_suffix(".txt").write_text(f"a {kind} clip")
        paths.append(path)
    return paths


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def tiny_or_l14(folder: Path, l14: bool) -> tuple[str, str]:
    """A CLIP vision tower (ViT-L/14's shape when l14, random weights) and a LAION-shaped head, saved."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=224, patch_size=14, projection_dim=768) if l14 else CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        patch_size=8, projection_dim=768)  # fmt: skip
    CLIPVisionModelWithProjection(cfg).save_pretrained(folder / "clip")
    dims = [768, 1024, 128, 64, 16, 1]
    head = {}
    for j, (i, o) in enumerate(zip(dims[:-1], dims[1:])):
        idx = [0, 2, 4, 6, 7][j]
        head[f"layers.{idx}.weight"], head[f"layers.{idx}.bias"] = torch.randn(o, i) / i**0.5, torch.zeros(o)
    save_file(head, folder / "head.safetensors")
    return str(folder / "clip"), str(folder / "head.safetensors")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sources", type=int, default=24)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--fps", type=int, default=24)
    p.add_argument("--size", type=int, nargs=2, default=[360, 640], metavar=("H", "W"))
    p.add_argument("--aesthetic-clips", type=int, default=3, help="clips timed through CLIP ViT-L/14 (slow on CPU)")
    p.add_argument("--no-append", action="store_true")
    a = p.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    from opensora_lite.config.schema import CurateJobConfig
    from opensora_lite.curate.clips import Source, clips_of, cut, sample_positions, scan, windows
    from opensora_lite.curate.merge import run
    from opensora_lite.curate.stages import AestheticStage, BlurStage, DedupStage, OcrStage, flow_motion
    from opensora_lite.data.ingest import video_meta

    load = os.getloadavg()[0]  # a shared machine's other work slows the wall times (not the end-to-end CPU time)
    work = Path(tempfile.mkdtemp(prefix="bench_curate_"))
    try:
        (work / "raw").mkdir()
        paths = corpus(work / "raw", a.sources, a.seconds, a.fps, *a.size)
        cfg = CurateJobConfig(source=str(work / "raw"), out=str(work / "out"))
        per_source = dict(split=[], cut=[])
        per_clip: dict[str, list[float]] = dict(flow=[], meta=[], blur=[], ocr=[], dedup=[], aesthetic=[])
        stages = dict(blur=BlurStage(cfg.blur), ocr=OcrStage(cfg.ocr), dedup=DedupStage(cfg.dedup))
        stages["ocr"].text_area(np.zeros((64, 64, 3), np.uint8))  # the model loads outside the timing
        motion: dict[str, list[float]] = dict(flow=[], motion_score=[], vmaf_motion=[], still=[])
        all_clips = []
        for i, path in enumerate(paths):
            data = path.read_bytes()
            t0 = time.perf_counter()
            fps, starts, thumbs = scan(data, cfg.split, cfg.motion.thumb_height)
            t1 = time.perf_counter()
            spans = windows(starts, len(thumbs), fps, cfg.split.max_window_s)
            cut(data, spans, [sample_positions(s, e, cfg.frames) for s, e in spans], cfg.ocr.height)
            per_source["split"].append(t1 - t0)
            per_source["cut"].append(time.perf_counter() - t1)
            clips = clips_of(i, Source(str(path)), cfg)
            all_clips += clips
            for clip in clips:
                t = time.perf_counter()
                flow = flow_motion(clip.thumbs, clip.fps, cfg.motion.gap_s, cfg.motion.pairs)
                per_clip["flow"].append(time.perf_counter() - t)
                t = time.perf_counter()
                meta = video_meta(clip.data)
                per_clip["meta"].append(time.perf_counter() - t)
                for name, stage in stages.items():
                    t = time.perf_counter()
                    stage.score(clip)
                    per_clip[name].append(time.perf_counter() - t)
                motion["flow"].append(flow)
                motion["motion_score"].append(meta["motion_score"])
                motion["vmaf_motion"].append(meta["vmaf_motion"])
                motion["still"].append("static" in path.name)
        clip_l, head = tiny_or_l14(work / "weights", l14=True)
        aesthetic = AestheticStage(type(cfg.aesthetic)(clip=clip_l, head=head))
        aesthetic.score(all_clips[0])  # loads the model
        for clip in all_clips[: a.aesthetic_clips]:
            t = time.perf_counter()
            aesthetic.score(clip)
            per_clip["aesthetic"].append(time.perf_counter() - t)
        n_src, n_clips = len(paths), len(all_clips)
        t = time.perf_counter()
        cpu0 = time.process_time()
        summary = run(CurateJobConfig(source=str(work / "raw"), out=str(work / "e2e"), unit_size=8))
        e2e, e2e_cpu = time.perf_counter() - t, time.process_time() - cpu0
    finally:
        shutil.rmtree(work, ignore_errors=True)

    clips_per_source = n_clips / n_src
    rows, total = [], 0.0
    parts = [
        ("read + split (PySceneDetect)", np.sum(per_source["split"]) / n_clips, "per source, shared by its clips"),
        ("sample + cut (2nd decode, re-encode cut windows)", np.sum(per_source["cut"]) / n_clips, "per source"),
        ("motion: Farneback flow (ours)", np.mean(per_clip["flow"]), "on the split's thumbnails"),
        ("motion_score + vmaf_motion (ingest's shard json)", np.mean(per_clip["meta"]), "a full decode"),
        ("blur: Laplacian variance", np.mean(per_clip["blur"]), f"{cfg.frames} frames"),
        ("OCR: rapidocr det + rec", np.mean(per_clip["ocr"]), f"{cfg.frames} frames"),
        ("dedup: DCT hash", np.mean(per_clip["dedup"]), f"{cfg.frames} frames"),
    ]
    for name, sec, note in parts:
        total += sec
        rows.append([name, f"{sec * 1000:.1f}", f"{1 / sec:.1f}", note])
    aes = float(np.mean(per_clip["aesthetic"])) if per_clip["aesthetic"] else float("nan")
    rows.append(["**sum without aesthetic**", f"**{total * 1000:.0f}**", f"**{1 / total:.2f}**", ""])
    rows.append(["aesthetic: CLIP ViT-L/14 + MLP", f"{aes * 1000:.0f}", f"{1 / aes:.2f}",
                 f"{cfg.frames} frames, {len(per_clip['aesthetic'])} clips"])  # fmt: skip
    kept = f"CPU {e2e_cpu / n_clips * 1000:.0f} ms/clip; kept {summary['kept']} of {summary['clips']}"
    rows.append(["end to end: osl-curate run, 1 rank, 1 worker", f"{e2e / n_clips * 1000:.0f}", f"{n_clips / e2e:.2f}",
                 kept])  # fmt: skip
    h, w = a.size
    note = (f". Corpus: {n_src} sources of {a.seconds:g} s at {h} x {w}, {a.fps} fps (H.264 crf 23), "
            f"{n_clips} clips after scene cuts ({clips_per_source:.2f} a source); one process, one thread; load "
            f"average {load:.1f} at the start")  # fmt: skip
    lines = heading("osl-curate throughput per stage, one core", "python3 -m benchmarks.bench_curate", note=note)
    lines += table(["part", "ms per clip", "clips/s per core", "note"], rows)
    still = np.array(motion["still"])
    mrows = []
    for m in ("flow", "motion_score", "vmaf_motion"):
        v = np.array(motion[m])
        gap = f"{v[still].max():.3g} / {v[~still].min():.3g}" if still.any() and (~still).any() else "-"
        mrows.append(
            [m, f"{spearman(motion[m], motion['flow']):.2f}", f"{spearman(motion[m], motion['vmaf_motion']):.2f}", gap]
        )
    lines += [
        "",
        "Motion measures on the same clips (Spearman rank correlation; highest still shot / lowest moving clip):",
        "",
    ]
    lines += table(["measure", "rho vs flow", "rho vs vmaf_motion", "still max / moving min"], mrows)
    hours = (total + aes) * 1e6 / 64 / 3600
    hours_no_aes = total * 1e6 / 64 / 3600
    lines += ["", f"1M such clips on a 64-core node (64 ranks or workers, these per-core figures): "
              f"{hours_no_aes:.1f} h without aesthetic, {hours:.1f} h with CLIP ViT-L/14 on the CPU "
              f"(on a GPU the aesthetic part is ~1K clips/s and drops out)."]  # fmt: skip
    publish(lines, append=not a.no_append)


if __name__ == "__main__":
    main()
