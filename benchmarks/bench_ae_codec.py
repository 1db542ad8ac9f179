#!/usr/bin/env python3
"""Encode and decode time and peak host memory of the full-size Video DC-AE against the Hunyuan VAE (CPU).

Both with random weights and their real architectures: `autoencoder=dc_ae` (dc-ae-f32t4c128, 459M
parameters, built and initialised without weights) and diffusers' AutoencoderKLHunyuanVideo with its
default constructor arguments, which are the released HunyuanVideo VAE's config.json values (the
script checks the ones that set its size), behind the same wrapper as `autoencoder=hunyuan`. fp32,
batch 1, tiled (each autoencoder's own tiling: `autoencoder.tiling`) and untiled.

Every measurement (autoencoder x tiling x encode/decode) runs in its own process: build the model and
a random input (a clip, or latents of the clip's shape), note the resident memory, run once, and report
the time, the process's peak resident memory (ru_maxrss) and that peak minus the memory held before the
call (the weights, the input, the interpreter): what the call itself needed.

    python3 -m benchmarks.bench_ae_codec                              # 256px, 32 (DC-AE) / 33 (Hunyuan) frames
    python3 -m benchmarks.bench_ae_codec --no-append --size 64 --frames 4
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from benchmarks.benchlib import REPO, heading, publish, rss_mib, table

# what the released HunyuanVideo VAE's config.json says (hunyuanvideo-community/HunyuanVideo, vae/)
HUNYUAN_RELEASED = dict(
    latent_channels=16,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    norm_num_groups=32,
    spatial_compression_ratio=8,
    temporal_compression_ratio=4,
    mid_block_add_attention=True,
)
LABELS = {"dc_ae": "Video DC-AE", "hunyuan": "HunyuanVideo VAE"}


def build(name: str, tiling: bool, tile: int | None = None):
    """(autoencoder, parameter count) of `name` with random weights, fp32; `tile`: the spatial tile side in
    px (both keep a quarter of a tile as overlap), else each autoencoder's own."""
    import dataclasses

    import torch

    from opensora_lite.autoencoders import build_autoencoder
    from opensora_lite.autoencoders.diffusers_vae import DiffusersVideoVAE, random_vae
    from opensora_lite.config.stages import load_autoencoder

    cfg = dataclasses.replace(load_autoencoder(name, f"autoencoder={name}"), dtype="fp32", tiling=tiling)
    if name == "dc_ae":
        if tile:
            cfg = dataclasses.replace(cfg, dc_ae=dataclasses.replace(cfg.dc_ae, tile_size=tile))
        ae = build_autoencoder(dataclasses.replace(cfg, path=None))
    else:
        torch.manual_seed(0)
        vae = random_vae("hunyuan")
        differs = {k: (v, vae.config[k]) for k, v in HUNYUAN_RELEASED.items() if list_of(vae.config[k]) != v}
        if differs:
            raise SystemExit(f"diffusers' default AutoencoderKLHunyuanVideo is not the released one: {differs}")
        if tile:
            vae.tile_sample_min_height = vae.tile_sample_min_width = tile
            vae.tile_sample_stride_height = vae.tile_sample_stride_width = tile * 3 // 4
        ae = DiffusersVideoVAE(dataclasses.replace(cfg, offload_decoder=False), vae=vae)
    return ae, sum(p.numel() for p in ae.parameters())


def exceeds_a_tile(name: str, ae, size: int, frames: int) -> bool:
    """Whether tiling splits this clip at all (else a tiled call is the untiled one)."""
    if name == "dc_ae":
        (lat_t, _), (lat_s, _) = ae.tiles_t, ae.tiles_s
        return frames > lat_t * ae.temporal_factor or size > lat_s * ae.spatial_factor
    # diffusers' Hunyuan VAE always splits time above tile_sample_min_num_frames (16; use_framewise_*),
    # tiled or not: enable_tiling adds only the spatial tiles
    v = ae.vae
    return size > min(v.tile_sample_min_height, v.tile_sample_min_width)


def list_of(v):
    return list(v) if isinstance(v, (tuple, list)) else v


def child(a) -> None:
    import torch

    name, tiling, op = a.child.split(",")
    ae, n_params = build(name, tiling == "tiled", a.tile)
    g = torch.Generator().manual_seed(0)
    s = ae.spatial_factor
    lat_t = ae.latent_frames(a.frames)
    if op == "encode":
        x = torch.rand(1, 3, a.frames, a.size, a.size, generator=g) * 2 - 1
    else:
        x = torch.randn(1, ae.latent_channels, lat_t, a.size // s, a.size // s, generator=g)
    if tiling == "tiled" and not exceeds_a_tile(name, ae, a.size, a.frames):
        print(json.dumps(dict(one_tile=True)))  # tiling would run exactly the untiled call
        return
    base = rss_mib()
    start = time.perf_counter()
    with torch.no_grad():
        out = ae.encode(x, sample=False) if op == "encode" else ae.decode(x, a.frames)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps(dict(seconds=seconds, peak=peak, base=base, params=n_params, out=list(out.shape))))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=256, help="square clip side, px")
    p.add_argument("--frames", type=int, default=32, help="DC-AE frames; Hunyuan takes one more (4k + 1)")
    p.add_argument("--hunyuan-frames", type=int, default=None, help="Hunyuan's frames (default: --frames + 1)")
    p.add_argument("--tile", type=int, default=None, help="spatial tile side, px (default: each autoencoder's own)")
    p.add_argument("--tilings", nargs="+", default=["untiled", "tiled"], choices=["untiled", "tiled"])
    p.add_argument("--timeout-s", type=float, default=600, help="give up on a measurement after this long")
    p.add_argument("--no-append", action="store_true")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child is not None:
        return child(a)

    frames = {"dc_ae": a.frames, "hunyuan": a.hunyuan_frames or a.frames + 1}
    rows = []
    for name in ("dc_ae", "hunyuan"):
        for tiling in a.tilings:
            for op in ("encode", "decode"):
                key = f"{name},{tiling},{op}"
                cmd = [
                    sys.executable,
                    "-m",
                    __spec__.name,
                    "--child",
                    key,
                    "--size",
                    str(a.size),
                    "--frames",
                    str(frames[name]),
                ]
                cmd += ["--tile", str(a.tile)] if a.tile else []
                label = [LABELS[name], tiling, op, f"{a.size}px x {frames[name]}"]
                try:
                    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=a.timeout_s, cwd=REPO)
                except subprocess.TimeoutExpired:
                    rows.append(label + [f"> {a.timeout_s:.0f} (stopped)", "", "", ""])
                    print(key, "timed out", flush=True)
                    continue
                except subprocess.CalledProcessError as e:
                    raise SystemExit(f"{key} failed:\n{e.stderr[-3000:]}") from e
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(key, r, flush=True)
                if r.get("one_tile"):
                    rows.append(label + ["one tile at this clip: the untiled call (not rerun)", "", "", ""])
                    continue
                rows.append(
                    label
                    + [
                        f"{r['seconds']:.1f}",
                        f"{r['peak'] / 1024:.1f}",
                        f"{(r['peak'] - r['base']) / 1024:.1f}",
                        f"{r['params'] / 1e6:.0f}M",
                    ]
                )
    import torch

    command = " ".join(["python3 -m benchmarks.bench_ae_codec", *sys.argv[1:]]).replace(" --no-append", "")
    tiles = (
        f"{a.tile} px tiles for both (a quarter of a tile overlapping)"
        if a.tile
        else "the DC-AE's 256 px x 32-frame tiles (0.25 overlap); diffusers' Hunyuan tiling (256 px tiles)"
    )
    lines = heading(
        "Full-size Video DC-AE vs HunyuanVideo VAE: encode / decode time and peak host memory (CPU)", command
    )
    lines += [
        f"Random weights, real architectures, fp32, batch 1, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; one call per fresh process. Tiling: {tiles}; above 16 frames "
        "diffusers' Hunyuan VAE splits time, tiled or not. Peak = the process's maximum "
        "resident memory (ru_maxrss); above model = that peak minus the resident memory just before the call "
        "(weights, input, interpreter).",
        "",
    ]
    header = ["autoencoder", "tiling", "call", "clip", "seconds", "peak GiB", "above model GiB", "parameters"]
    lines += table(header, rows)
    publish(lines, not a.no_append)


if __name__ == "__main__":
    main()
