#!/usr/bin/env python3
"""Train-step time of a Flux-width MMDiT on each autoencoder's latent shape for the same clip (CPU).

The opensora2 recipe's MMDiT (hidden 3072, 24 heads, FLUX.1-dev's widths, T5/CLIP input widths) cut to
`--double` double- and `--single` single-stream blocks. One trunk is shared: per autoencoder only the
layers whose shapes follow the latent space (`img_in`, `final_layer`) are swapped in, with the model's
latent channels and patch (configs/autoencoder/<name>.yaml: patch_size, else the recipe's [1, 2, 2]).
A step is forward + backward of a mean-square loss against a random velocity + one AdamW step over
every parameter that got a gradient, on random latents of the shape the autoencoder gives the clip:
no autoencoder runs. The autoencoders are timed in alternating rounds in one process, so machine
noise hits all alike; each figure is the median over the rounds, after one warm-up step.

    python3 -m benchmarks.bench_ae_step                # ~6 min on 2 CPU cores, appends to docs/benchmarks.md
    python3 -m benchmarks.bench_ae_step --no-append --rounds 1 --double 0 --single 1
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
from torch import nn

from benchmarks.bench_ae_tokens import AUTOENCODERS, recipe
from benchmarks.benchlib import heading, publish, table
from opensora_lite.autoencoders.base import frames_fit, latent_frame_count
from opensora_lite.config.stages import load_autoencoder
from opensora_lite.models.flux.model import LastLayer, MMDiT


def clip_frames(frames: int, temporal_factor: int, causal: bool) -> int:
    """The largest frame count <= frames + 1 that the autoencoder takes (33 -> 33, or 32 for DC-AE)."""
    n = frames + 1
    while not frames_fit(n, temporal_factor, causal):
        n -= 1
    return n


def shapes(a, model_patch: list[int]) -> list[dict]:
    """Per autoencoder: the clip's frame count, latent shape [C, T', H', W'], patch and token count."""
    out = []
    for name, label in AUTOENCODERS + [("pixel", "pixel (space-to-depth 2x)")]:
        ae = load_autoencoder(name, f"autoencoder={name}")
        patch = list(ae.patch_size or model_patch)
        frames = clip_frames(a.frames, ae.temporal_factor, ae.causal)
        side = a.size // ae.spatial_factor
        lat = [ae.latent_channels, latent_frame_count(frames, ae.temporal_factor, ae.causal), side, side]
        tokens = (lat[1] // patch[0]) * (side // patch[1]) * (side // patch[2])
        out.append(dict(name=name, label=label, frames=frames, latent=lat, patch=patch, tokens=tokens))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=128, help="square clip side, px")
    p.add_argument("--frames", type=int, default=32, help="frames (+1 where the autoencoder takes 4k+1 / 8k+1)")
    p.add_argument("--double", type=int, default=1)
    p.add_argument("--single", type=int, default=1)
    p.add_argument("--text-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2, help="timed rounds, after one warm-up step")
    p.add_argument("--max-tokens", type=int, default=4096, help="list, but do not time, larger token counts")
    p.add_argument("--no-append", action="store_true")
    a = p.parse_args()

    cfg = recipe()
    base = dataclasses.replace(cfg.model, depth=a.double, depth_single_blocks=a.single, attention_backend="sdpa")
    cases = shapes(a, list(cfg.model.patch_size))
    timed_cases = [c for c in cases if c["tokens"] <= a.max_tokens]
    torch.manual_seed(0)
    model = MMDiT(dataclasses.replace(base, latent_channels=16)).train()
    heads: dict[str, tuple[nn.Module, nn.Module]] = {}
    inputs = {}
    for c in timed_cases:  # the latent-shaped layers of each autoencoder, random (not the zero init)
        patch_dim = c["latent"][0] * c["patch"][0] * c["patch"][1] * c["patch"][2]
        img_in, final = nn.Linear(patch_dim, base.hidden_size), LastLayer(base.hidden_size, patch_dim)
        nn.init.normal_(final.linear.weight, std=0.02)
        heads[c["name"]] = (img_in, final)
        x = torch.randn(1, *c["latent"])
        inputs[c["name"]] = (x, torch.randn_like(x))
    txt = torch.randn(1, a.text_tokens, base.context_in_dim)
    y, ts = torch.randn(1, base.vec_in_dim), torch.rand(1)
    trunk = [p for n, p in model.named_parameters() if not n.startswith(("img_in.", "final_layer."))]
    extra = [p for pair in heads.values() for m in pair for p in m.parameters()]
    opt = torch.optim.AdamW(trunk + extra, lr=1e-5, fused=True)

    def step(c: dict) -> tuple[float, float]:
        """(forward + backward, AdamW step) seconds."""
        model.img_in, model.final_layer = heads[c["name"]]
        model.cfg = dataclasses.replace(base, latent_channels=c["latent"][0], patch_size=c["patch"])
        x, v = inputs[c["name"]]
        opt.zero_grad(set_to_none=True)  # AdamW skips the other autoencoders' layers (no gradient)
        start = time.perf_counter()
        nn.functional.mse_loss(model(x, ts, txt, y), v).backward()
        mid = time.perf_counter()
        opt.step()
        return mid - start, time.perf_counter() - mid

    # warm-up: one step of the cheapest shape creates the trunk's AdamW state (the other shapes differ
    # only in two small layers, whose state their first timed step creates)
    step(min(timed_cases, key=lambda c: c["tokens"]))
    times: dict[str, list[tuple[float, float]]] = {c["name"]: [] for c in timed_cases}
    for _ in range(a.rounds):
        for c in timed_cases:
            times[c["name"]].append(step(c))
    med = {
        k: [statistics.median(t[i] for t in v) for i in (0, 1)] + [statistics.median(sum(t) for t in v)]
        for k, v in times.items()
    }
    ref = med["hunyuan"][2]
    rows = []
    for c in cases:
        lat = "x".join(map(str, c["latent"]))
        common = [c["label"], str(c["frames"]), lat, "x".join(map(str, c["patch"])), f"{c['tokens']:,}"]
        if c["name"] in med:
            fb, adam, total = med[c["name"]]
            rows.append(common + [f"{fb:.1f}", f"{adam:.1f}", f"{total:.1f}", f"{ref / total:.2f}x"])
        else:
            rows.append(common + [f"not timed (> {a.max_tokens:,} tokens)", "", "", ""])
    n_params = sum(p.numel() for p in trunk)
    lines = heading(
        "Train step time by autoencoder latent shape (Flux-width MMDiT cut to a few blocks, CPU)",
        "python3 -m benchmarks.bench_ae_step",
    )
    lines += [
        f"Clip: {a.size}x{a.size} px, {a.frames + 1} frames ({a.frames} where the autoencoder takes multiples "
        f"of 4); random latents of each autoencoder's shape (no autoencoder runs). Model: the opensora2 "
        f"recipe's MMDiT (hidden {base.hidden_size}, {base.num_heads} heads, T5 width {base.context_in_dim}) cut "
        f"to {a.double} double + {a.single} single block ({n_params / 1e6:.0f}M trunk parameters), batch 1, "
        f"{a.text_tokens} text tokens, fp32, SDPA, torch {torch.__version__}, {torch.get_num_threads()} threads. "
        f"Step = forward + backward + AdamW step (fused; each column: median of {a.rounds} alternating rounds, after "
        "one warm-up step).",
        "",
    ]
    header = ["autoencoder", "frames", "latent C x T x H x W", "patch", "video tokens", "fwd+bwd s", "AdamW s"]
    lines += table(header + ["step s", "step vs Hunyuan"], rows)
    publish(lines, not a.no_append)


if __name__ == "__main__":
    main()
