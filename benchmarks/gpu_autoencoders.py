#!/usr/bin/env python3
"""Autoencoder encode/decode throughput on one GPU: every autoencoder the framework ships, at a stage-1 clip.

Each config under configs/autoencoder/ is built as training would build it (its dtype, its tiling),
with random weights at full size: the pixel space-to-depth AE, Open-Sora's Video DC-AE f32t4c128, and
the diffusers VAEs whose default architecture is the released one (Hunyuan, Hunyuan 1.5, Wan 2.1,
LTX-Video); a config whose geometry the default does not match (Wan 2.2) is listed as not built.
One 256px clip of as many frames as the AE's frame rule allows up to 129 (129 for causal 1 + 4k / 1 + 8k
AEs, 128 for DC-AE's multiples of 4), batch 1, the decoder on the GPU (no offload: this is the
device's rate). Median of --iters timed calls after one warm-up; peak memory per call.

    python3 -m benchmarks.gpu_autoencoders                      # H100/H200, 129 frames: appends to docs/benchmarks.md
    python3 -m benchmarks.gpu_autoencoders --frames 33 --iters 2 --budget-s 30   # as the suite's part
    python3 -m benchmarks.gpu_autoencoders --smoke --no-append  # tiny AEs on CPU: checks the script runs
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

import torch
from omegaconf import OmegaConf

from benchmarks.benchlib import Budget, Report, parse_gpu_args
from opensora_lite.autoencoders import build_autoencoder
from opensora_lite.autoencoders.base import frames_fit
from opensora_lite.config.schema import AutoencoderConfig
from opensora_lite.errors import CheckpointError
from opensora_lite.layout import config_dir

CONFIGS = ["pixel", "dc_ae", "hunyuan", "hunyuan15", "wan", "wan22", "ltx"]
# --smoke: tiny versions of the same families (diffusers_vae.TINY_ARCHITECTURES), the config changes that
# describe them, and the tiny DC-AE config
TINY_CHANGES = {"hunyuan": dict(latent_channels=4, spatial_factor=4), "wan": dict(latent_channels=4)}
TINY_WAN_STATS = dict(latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
TINY_CONFIG = {"dc_ae": "dc_ae_tiny"}
SMOKE_CONFIGS = ["pixel", "dc_ae", "hunyuan", "wan"]


def load_config(name: str) -> AutoencoderConfig:
    """configs/autoencoder/<name>.yaml onto the schema, with no weights path (random weights)."""
    yaml = OmegaConf.load(config_dir() / "autoencoder" / f"{name}.yaml")
    merged = OmegaConf.merge(OmegaConf.structured(AutoencoderConfig), yaml)
    cfg: AutoencoderConfig = OmegaConf.to_object(merged)
    cfg.path, cfg.offload_decoder = None, False
    return cfg


def build(name: str, smoke: bool, device: torch.device):
    """(autoencoder on `device`, its config), or (None, why) when the default architecture does not fit."""
    import diffusers

    from opensora_lite.autoencoders.dc_ae import VideoDCAE
    from opensora_lite.autoencoders.dc_ae_blocks import init_weights
    from opensora_lite.autoencoders.diffusers_vae import DiffusersVideoVAE, random_vae
    from opensora_lite.dtypes import dtype_of

    cfg = load_config(TINY_CONFIG.get(name, name) if smoke else name)
    if smoke:
        for key, value in TINY_CHANGES.get(name, {}).items():
            setattr(cfg, key, value)
        cfg.dtype = "fp32"
    torch.manual_seed(0)
    if cfg.kind in ("hunyuan", "hunyuan15", "wan", "ltx"):
        diffusers.utils.logging.set_verbosity_error()
        stats = TINY_WAN_STATS if smoke and cfg.kind == "wan" else {}
        with torch.device(device):  # random init on the GPU: seconds, not a minute of CPU init
            vae = random_vae(cfg.kind, tiny=smoke, **stats)
        try:
            return DiffusersVideoVAE(cfg, vae=vae).to(device), cfg
        except CheckpointError as e:
            return None, str(e).split(": ", 1)[-1]
    if cfg.kind == "dc_ae" and device.type == "cuda":  # init on the GPU too: ~10 s of CPU init at full size
        dtype, cfg.dtype = cfg.dtype, "fp32"
        ae = VideoDCAE(cfg, device="meta").to_empty(device=device)
        init_weights(ae)
        cfg.dtype = dtype
        return ae.to(dtype_of(dtype)), cfg
    return build_autoencoder(cfg).to(device), cfg


def clip_frames(cfg: AutoencoderConfig, most: int) -> int:
    """The longest clip of at most `most` frames the AE's frame rule takes."""
    return next(n for n in range(most, 0, -1) if frames_fit(n, cfg.temporal_factor, cfg.causal))


def timed(fn, device: torch.device, iters: int) -> tuple[float, float | None, torch.Tensor]:
    """(median seconds, peak GiB over the calls, last output) of fn() after one warm-up call."""
    out = fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(iters):
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return sorted(times)[len(times) // 2], peak, out


def gib(peak: float | None) -> str:
    return "n/a" if peak is None else f"{peak:.2f}"


def measure(name: str, a, device: torch.device) -> tuple[list[str], dict]:
    ae, cfg = build(name, a.smoke, device)
    if ae is None:
        return [name, "not built", cfg[:90], "", "", "", "", "", ""], {}
    frames = clip_frames(cfg, a.frames)
    video = torch.rand(1, 3, frames, a.size, a.size, device=device) * 2 - 1
    enc_s, enc_peak, latents = timed(lambda: ae.encode(video, sample=False), device, a.iters)
    dec_s, dec_peak, decoded = timed(lambda: ae.decode(latents, frames), device, a.iters)
    cells = [
        name,
        f"{cfg.dtype}{', tiled' if cfg.tiling else ''}",
        f"{frames} -> {'x'.join(map(str, latents.shape[1:]))}",
        f"{1 / enc_s:.3g}",
        f"{frames / enc_s:.4g}",
        gib(enc_peak),
        f"{1 / dec_s:.3g}",
        f"{decoded.shape[2] / dec_s:.4g}",  # (one latent frame decodes as an image)
        gib(dec_peak),
    ]
    return cells, dict(encode_s=enc_s, decode_s=dec_s, encode_peak_gib=enc_peak, decode_peak_gib=dec_peak)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=CONFIGS, help="names under configs/autoencoder/")
    p.add_argument("--frames", type=int, default=129, help="at most this many frames (the AE's rule decides)")
    p.add_argument("--size", type=int, default=256, help="square frame side in pixels")
    p.add_argument("--iters", type=int, default=3)
    a, device = parse_gpu_args(p)
    budget = Budget(a.budget_s)  # (counts from here; the suite's deadline counts diffusers' import too)
    cuda = device.type == "cuda"
    if a.smoke:
        a.configs, a.frames, a.size, a.iters = SMOKE_CONFIGS, 9, 16, 1
    gpu = torch.cuda.get_device_name() if cuda else "CPU (smoke)"
    report = Report(f"Autoencoders on one {gpu}: encode/decode throughput", "python3 -m benchmarks.gpu_autoencoders",
                    append=not a.no_append)  # fmt: skip
    report.text(
        f"torch {torch.__version__}. One {a.size}x{a.size} clip (batch 1), random weights "
        f"({'tiny' if a.smoke else 'full size'}, built on the device), each "
        "config's dtype and tiling, decoder on the device; median of "
        f"{a.iters} calls after a warm-up; peak = max allocated during the calls. A row is started only when the "
        "longest row before it fits before the cap."
    )
    header = ["config", "dtype", "frames -> latent", "encode clips/s", "encode frames/s", "encode peak GiB"]
    report.table(header + ["decode clips/s", "decode frames/s", "decode peak GiB"])
    failed, took = False, []
    for name in a.configs:
        estimate = max(took, default=None)
        if not budget.fits(estimate):  # the table still comes out inside the suite's cap
            report.row([name, budget.why_not(estimate), "", "", "", "", "", "", ""])
            continue
        began = time.perf_counter()
        try:
            cells, data = measure(name, a, device)
            report.row(cells, **data)
        except Exception as e:  # one AE's failure (say, out of memory) leaves the others' rows
            traceback.print_exc()
            report.row([name, "failed", f"{type(e).__name__}: {e}"[:90].replace("|", "/"), "", "", "", "", "", ""])
            failed = True
        took.append(time.perf_counter() - began)
        if cuda:
            torch.cuda.empty_cache()  # the last AE's memory back before the next
    report.close()
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
