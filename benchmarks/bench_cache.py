#!/usr/bin/env python3
"""Training steps per second from the latent cache against encoding on the fly, side by side.

The tiny curriculum's text-to-video stage (16px, 5 frames, batch 16, the 1.6M-parameter MMDiT, tiny
T5/CLIP) on Shapes clips, trained from scratch for --steps steps twice in one process: once decoding
the clips and running the encoders every step (`data.kind=video`), once from the stage's latent
cache (`data.kind=cached`), built beforehand and timed on its own. With --vae hunyuan the autoencoder
is a small random Hunyuan video VAE (diffusers AutoencoderKLHunyuanVideo built from a config and
saved locally, 4x8x8, 16 channels, 32-64 wide): encoding then costs what a VAE costs, which is what the cache
saves at scale. Rounds alternate the two settings to share the machine's noise.

    python3 -m benchmarks.bench_cache                  # ~4 min on 2 CPU cores, appends to docs/benchmarks.md
    python3 -m benchmarks.bench_cache --vae hunyuan
    python3 -m benchmarks.bench_cache --steps 3 --rounds 1 --clips 48 --no-append   # smoke
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.benchlib import heading, publish, table


def hunyuan_vae(folder: Path) -> list[str]:
    """A small random Hunyuan VAE saved as a local diffusers folder; the overrides that select it."""
    import torch
    from diffusers import AutoencoderKLHunyuanVideo

    torch.manual_seed(0)
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=16,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(32, 64, 64, 64),
        layers_per_block=1,
        norm_num_groups=8,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
        mid_block_add_attention=False,
    )
    vae.save_pretrained(folder)
    return [
        "autoencoder=hunyuan",
        f"autoencoder.path={folder}",
        "autoencoder.dtype=fp32",
        "autoencoder.tiling=false",
        "model.patch_size=[1,1,1]",  # 16px crops -> 2 x 2 latent tokens per frame
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--clips", type=int, default=480)
    p.add_argument("--vae", choices=["pixel", "hunyuan"], default="pixel")
    p.add_argument("--no-append", action="store_true")
    a = p.parse_args()

    from benchmarks.benchlib import compose
    from opensora_lite.cli.curriculum import run
    from opensora_lite.data.synthetic import ShapesConfig, write_shapes_shards

    work = Path(tempfile.mkdtemp(prefix="bench_cache-"))
    try:
        data = work / "shapes"
        write_shapes_shards(data, ShapesConfig(num_clips=a.clips, clips_per_shard=max(1, a.clips // 4)), progress=False)
        extra = hunyuan_vae(work / "vae") if a.vae == "hunyuan" else []
        base = [
            "experiment=tiny_cpu",
            f"data.shards={data}",
            "data.num_workers=1",
            "run.stage=t2v",
            "curriculum.stages.t2v.init=none",
            f"curriculum.stages.t2v.steps={a.steps}",
            "curriculum.stages.t2v.checkpoint_every=0",
            "curriculum.stages.t2v.evaluate=false",
            "logger.progress_bar=false",
            "logger.console=false",
            *extra,
        ]
        cache = [f"data.cache_dir={work / 'cache'}"]
        began = time.perf_counter()
        from opensora_lite.cli.cache import run as build

        build(compose([*base, "data.kind=cached", *cache]))
        build_s = time.perf_counter() - began
        samples = json.loads(next((work / "cache").glob("t2v-*/manifest.json")).read_text())["samples"]
        seconds = {"video": [], "cached": []}
        for r in range(a.rounds):
            for kind in ("video", "cached") if r % 2 == 0 else ("cached", "video"):
                name = f"{kind}-{r}"
                result = run(compose([*base, f"data.kind={kind}", *cache, f"run.root={work}", f"run.name={name}"]))[0]
                seconds[kind].append(result.seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = {k: min(v) for k, v in seconds.items()}
    rows = [
        [
            kind,
            f"{a.steps / best[kind]:.2f}",
            " / ".join(f"{s:.1f}" for s in seconds[kind]),
            f"{best['video'] / best[kind]:.2f}x",
        ]
        for kind in ("video", "cached")
    ]
    lines = heading(
        f"Latent cache vs on-the-fly encoding ({a.vae} autoencoder)",
        "python3 -m benchmarks.bench_cache" + (f" --vae {a.vae}" if a.vae != "pixel" else ""),
    )
    lines += [
        f"Tiny curriculum t2v stage, {a.steps} steps from scratch, 1 loader worker, {a.clips} Shapes clips; "
        f"best of {a.rounds} rounds. Building the cache ({samples} samples) took {build_s:.1f} s once.",
        "",
    ]
    lines += table(["data.kind", "steps/s (best)", "train seconds per round", "speed-up"], rows)
    publish(lines, not a.no_append)


if __name__ == "__main__":
    main()
