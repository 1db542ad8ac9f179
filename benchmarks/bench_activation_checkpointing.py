#!/usr/bin/env python3
"""Peak memory of one training step with selective activation checkpointing, on CPU.

Each setting (how many double- and single-stream blocks recompute their activations in backward) runs
in a fresh process: build the model and inputs, note the resident memory, run forward + backward once,
and report the peak resident memory above that baseline (ru_maxrss: every byte the step touched,
activations and gradients included) and the step time. Fresh processes keep one setting's freed
memory from hiding another's peak.

    python3 -m benchmarks.bench_activation_checkpointing              # ~1 min on 2 CPU cores
    python3 -m benchmarks.bench_activation_checkpointing --no-append --grid 2 16 16
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from benchmarks.benchlib import REPO, heading, mmdit_config, publish, rss_mib, table


def child(a) -> None:
    import torch

    from opensora_lite.models.flux import SPEC as FLUX
    from opensora_lite.models.flux.model import MMDiT
    from opensora_lite.parallel.checkpointing import apply_activation_checkpointing

    cfg = mmdit_config(a.hidden, a.heads, a.double, a.single, a.text_dim, 64)
    torch.manual_seed(0)
    model = MMDiT(cfg)
    wrapped = apply_activation_checkpointing(
        FLUX.blocks(model), {"double_blocks": a.ac_double, "single_blocks": a.ac_single}
    )
    t, h, w = a.grid
    x = torch.randn(a.batch, 16, t, 2 * h, 2 * w)
    txt = torch.randn(a.batch, a.text_tokens, a.text_dim)
    y, ts = torch.randn(a.batch, 64), torch.rand(a.batch)
    for p in model.parameters():  # gradient buffers exist before the baseline: only activations differ
        p.grad = torch.zeros_like(p)
    base = rss_mib()
    start = time.perf_counter()
    model(x, ts, txt, y).pow(2).mean().backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"wrapped": wrapped, "peak_mib": peak - base, "seconds": seconds}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--double", type=int, default=4)
    p.add_argument("--single", type=int, default=8)
    p.add_argument("--grid", type=int, nargs=3, default=[4, 16, 16], help="latent tokens (t, h, w) after patching")
    p.add_argument("--text-tokens", type=int, default=128)
    p.add_argument("--text-dim", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--ac-double", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--ac-single", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--no-append", action="store_true")
    a = p.parse_args()
    if a.ac_double is not None:
        return child(a)

    settings = [(0, 0), (a.double, 0), (0, a.single), (a.double // 2, a.single // 2), (a.double, a.single)]
    passthrough = [arg for arg in sys.argv[1:] if arg != "--no-append"]
    results = []
    for dbl, sgl in settings:
        cmd = [
            sys.executable,
            "-m",
            __spec__.name,
            *passthrough,
            "--ac-double",
            str(dbl),
            "--ac-single",
            str(sgl),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
        results.append((dbl, sgl, json.loads(out.stdout.strip().splitlines()[-1])))
    none_peak, none_time = results[0][2]["peak_mib"], results[0][2]["seconds"]
    rows = [
        [
            f"{dbl}/{a.double}",
            f"{sgl}/{a.single}",
            f"{r['peak_mib']:.0f}",
            f"{r['peak_mib'] / none_peak:.2f}",
            f"{r['seconds']:.2f}",
            f"{r['seconds'] / none_time:.2f}",
        ]
        for dbl, sgl, r in results
    ]
    tokens = a.grid[0] * a.grid[1] * a.grid[2]
    lines = heading("Activation checkpointing memory (CPU)", "python3 -m benchmarks.bench_activation_checkpointing")
    lines += [
        f"Shape: hidden {a.hidden}, {a.heads} heads, {a.double} double + {a.single} single blocks, batch {a.batch}, "
        f"{tokens} video + {a.text_tokens} text tokens, fp32. Peak = max resident memory during one forward + "
        "backward above the memory held before it (weights, gradient buffers and inputs excluded).",
        "",
    ]
    lines += table(
        ["double blocks recomputed", "single blocks recomputed", "peak MiB", "vs none", "step s", "vs none"], rows
    )
    publish(lines, not a.no_append)


if __name__ == "__main__":
    main()
