#!/usr/bin/env python3
"""A LoRA training step against a full one (stage.lora), on CPU: step time and peak memory.

A Flux-width MMDiT (hidden 3072, 24 heads, T5/CLIP input widths) cut to a few blocks. Each setting runs
in a fresh process: build the model, note the resident memory (before the model), then take AdamW
steps (forward + backward + update) and report the median step time after the first and the peak
resident memory above the baseline (ru_maxrss: weights, gradients, optimizer state and activations).
LoRA: peft adapters as a LoRA stage puts them (models/lora.py, default targets attention + mlp), base
frozen in fp32 (bf16 is slow on CPUs); the checkpoint size is what a mid-stage checkpoint holds.

    OMP_NUM_THREADS=1 python3 -m benchmarks.bench_lora              # ~3 min on one core
    python3 -m benchmarks.bench_lora --no-append --hidden 256 --heads 4 --text-dim 64 --vec-dim 32
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from benchmarks.benchlib import REPO, heading, mmdit_config, publish, rss_mib, table


def child(a) -> None:
    import peft  # noqa: F401  (imported by both settings before the baseline: its import is not the step's memory)
    import torch

    from opensora_lite.config.schema import OptimConfig
    from opensora_lite.models.flux import SPEC as FLUX
    from opensora_lite.models.flux.model import MMDiT
    from opensora_lite.models.lora import apply_lora
    from opensora_lite.train.optim import build_optimizer

    cfg = mmdit_config(a.hidden, a.heads, a.double, a.single, a.text_dim, a.vec_dim)
    t, h, w = a.grid
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, 16, t, 2 * h, 2 * w, generator=g)
    txt = torch.randn(a.batch, a.text_tokens, a.text_dim, generator=g)
    y, ts = torch.randn(a.batch, a.vec_dim, generator=g), torch.rand(a.batch, generator=g)
    base = rss_mib()
    torch.manual_seed(0)
    model = MMDiT(cfg)
    if a.lora_rank:
        apply_lora(model, a.lora_rank, float(a.lora_rank), 0.0, ["attention", "mlp"], FLUX.lora_groups)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = build_optimizer(trainable, OptimConfig(lr=1e-5), torch.device("cpu"))
    times = []
    for _ in range(a.steps):
        start = time.perf_counter()
        (model(x, ts, txt, y) - x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    out = {
        "params": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in trainable),
        "peak_mib": peak - base,
        "seconds": statistics.median(times[1:] or times),
    }
    print(json.dumps(out))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=3072)
    p.add_argument("--heads", type=int, default=24)
    p.add_argument("--double", type=int, default=1)
    p.add_argument("--single", type=int, default=1)
    p.add_argument("--grid", type=int, nargs=3, default=[1, 8, 8], help="latent tokens (t, h, w) after patching")
    p.add_argument("--text-tokens", type=int, default=32)
    p.add_argument("--text-dim", type=int, default=4096)
    p.add_argument("--vec-dim", type=int, default=768)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--ranks", type=int, nargs="+", default=[16, 64], help="LoRA ranks to compare with full training")
    p.add_argument("--lora-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--no-append", action="store_true")
    a = p.parse_args()
    if a.lora_rank is not None:
        return child(a)

    passthrough = [arg for arg in sys.argv[1:] if arg != "--no-append"]
    results = []
    for rank in [0, *a.ranks]:
        cmd = [sys.executable, "-m", __spec__.name, *passthrough, "--lora-rank", str(rank)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
        results.append((rank, json.loads(out.stdout.strip().splitlines()[-1])))
    full = results[0][1]
    rows = [
        [
            "full" if rank == 0 else f"LoRA rank {rank}",
            f"{r['trainable'] / 1e6:.2f}M of {r['params'] / 1e6:.1f}M",
            f"{r['peak_mib']:.0f}",
            f"{r['peak_mib'] / full['peak_mib']:.2f}",
            f"{r['seconds']:.2f}",
            f"{r['seconds'] / full['seconds']:.2f}",
            f"{4 * r['trainable'] / 2**20:.0f}",
        ]
        for rank, r in results
    ]
    tokens = a.grid[0] * a.grid[1] * a.grid[2]
    lines = heading("LoRA step against a full step (CPU)", "OMP_NUM_THREADS=1 python3 -m benchmarks.bench_lora")
    lines += [
        f"Shape: hidden {a.hidden}, {a.heads} heads, {a.double} double + {a.single} single blocks, text {a.text_dim} / "
        f"pooled {a.vec_dim} wide, batch {a.batch}, {tokens} video + {a.text_tokens} text tokens, fp32, AdamW, "
        f"{os.environ.get('OMP_NUM_THREADS', 'all')} thread(s). Peak = max resident memory while building the model "
        "and taking the steps, above the memory before it; step = median of the steps after the first; "
        "checkpoint = the trainable tensors in fp32 (a LoRA checkpoint's adapters.safetensors; plus the "
        "optimizer's two moments of the same size).",
        "",
    ]
    header = ["training", "trainable params", "peak MiB", "vs full", "step s", "vs full", "checkpoint MiB"]
    lines += table(header, rows)
    publish(lines, not a.no_append)


if __name__ == "__main__":
    main()
