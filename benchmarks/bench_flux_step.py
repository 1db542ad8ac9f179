#!/usr/bin/env python3
"""Training-step time of our MMDiT against diffusers' FluxTransformer2DModel, side by side.

Both models get the same architecture, the same random weights (converted to BFL names), the same
tokens, positions, text and timesteps, and the same attention kernel (torch SDPA, what `auto` picks
on a CPU).
One step is forward + backward of a mean-square loss. The two are timed in alternating rounds in one
process, so machine noise hits both alike; the ratio is the figure.

    python3 -m benchmarks.bench_flux_step                 # ~2 min on 2 CPU cores, appends to docs/benchmarks.md
    python3 -m benchmarks.bench_flux_step --no-append --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.benchlib import heading, publish, table
from benchmarks.fluxpair import make_inputs, pair, run_ours, run_ref


def step_ours(model, x: dict) -> None:
    run_ours(model, x).pow(2).mean().backward()


def step_ref(model, x: dict) -> None:
    run_ref(model, x).pow(2).mean().backward()


def timed(fn, model, x, iters: int) -> float:
    times = []
    for _ in range(iters):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        fn(model, x)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--double", type=int, default=2)
    p.add_argument("--single", type=int, default=4)
    p.add_argument("--grid", type=int, nargs=3, default=[4, 16, 16], help="latent tokens (t, h, w) after patching")
    p.add_argument("--text-tokens", type=int, default=128)
    p.add_argument("--text-dim", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=6, help="alternating rounds; each takes the best of --iters")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--no-append", action="store_true")
    a = p.parse_args()

    head_dim = a.hidden // a.heads
    rope_t = head_dim // 8
    axes = (rope_t, (head_dim - rope_t) // 2, (head_dim - rope_t) // 2)
    ours, ref = pair(a.double, a.single, a.heads, head_dim, axes, False, a.text_dim, 64)
    ours.train(), ref.train()
    x = make_inputs(a.grid, a.text_tokens, a.text_dim, 64, False, "cpu", torch.float32, a.batch)
    with torch.no_grad():  # same function before timing anything
        a_out, b_out = run_ours(ours, x), run_ref(ref, x)
        diff = ((a_out - b_out).abs().max() / b_out.abs().max()).item()
    for fn, model in ((step_ours, ours), (step_ref, ref)):  # warm-up
        timed(fn, model, x, 1)
    per_round = []
    for _ in range(a.rounds):
        t_ours = timed(step_ours, ours, x, a.iters)
        t_ref = timed(step_ref, ref, x, a.iters)
        per_round.append((t_ours, t_ref))
    ours_med = statistics.median(r[0] for r in per_round)
    ref_med = statistics.median(r[1] for r in per_round)
    ratios = [r[0] / r[1] for r in per_round]

    tokens = a.grid[0] * a.grid[1] * a.grid[2]
    shape = (
        f"hidden {a.hidden}, {a.heads} heads, {a.double} double + {a.single} single blocks, batch {a.batch}, "
        f"{tokens} video + {a.text_tokens} text tokens, fp32, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; max output difference {diff:.1e} (relative to max |output|)"
    )
    rows = [
        ["opensora_lite MMDiT", f"{ours_med * 1000:.0f}", f"{ours_med / ref_med:.3f}"],
        ["diffusers FluxTransformer2DModel", f"{ref_med * 1000:.0f}", "1.000"],
    ]
    lines = heading("Flux step time vs diffusers (CPU)", "python3 -m benchmarks.bench_flux_step")
    lines += [f"Shape: {shape}.", ""]
    lines += table(["model", "fwd+bwd ms (median of rounds)", "ratio"], rows)
    lines += ["", f"Per-round ratios: {', '.join(f'{r:.3f}' for r in ratios)} (target: at most 0.9)."]
    publish(lines, not a.no_append)


if __name__ == "__main__":
    main()
