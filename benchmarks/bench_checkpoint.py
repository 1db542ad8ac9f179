#!/usr/bin/env python3
"""How long training is held per checkpoint: synchronous against asynchronous (`stage.async_checkpoint`).

A Flux-width MMDiT (3072 wide, 24 heads; FLUX.1-dev's blocks) cut to a few blocks trains with AdamW on
the `single` engine; the trainer's own CheckpointWriter writes real checkpoints (weights, optimizer state,
trainer state; temporary folder, fsync, rename) into a scratch stage directory. Sync and async
checkpoints alternate in one process, so machine noise hits both alike. After an asynchronous
checkpoint returns, training steps go on until the background write is published: their count is the
evidence that training continues during the write.

    python3 -m benchmarks.bench_checkpoint                   # ~4 min on 2 CPU cores, ~9 GiB RAM; appends
    python3 -m benchmarks.bench_checkpoint --no-append --single 1 --rounds 1
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.benchlib import heading, publish, table
from opensora_lite.checkpoint.stage import StageCheckpoints as StageDir  # noqa: E402
from opensora_lite.checkpoint.writer import CheckpointWriter  # noqa: E402
from opensora_lite.config.schema import ParallelConfig  # noqa: E402
from opensora_lite.models.flux import SPEC as FLUX
from opensora_lite.models.flux.model import MMDiT, MMDiTConfig  # noqa: E402
from opensora_lite.parallel import build_engine  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--double", type=int, default=0, help="double-stream blocks")
    p.add_argument("--single", type=int, default=2, help="single-stream blocks")
    p.add_argument("--rounds", type=int, default=3, help="sync/async pairs; medians are reported")
    p.add_argument("--dir", default=None, help="where the checkpoints go (default: a temporary folder)")
    p.add_argument("--smoke", action="store_true", help="a 64-wide model, one round: seconds (for the tests)")
    p.add_argument("--no-append", action="store_true")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    width, heads = (64, 2) if a.smoke else (3072, 24)
    rounds = 1 if a.smoke else a.rounds
    cfg = MMDiTConfig(
        latent_channels=16,
        patch_size=[1, 2, 2],
        hidden_size=width,
        num_heads=heads,
        depth=a.double,
        depth_single_blocks=a.single,
        axes_dim=[8, 12, 12] if a.smoke else [16, 56, 56],
        context_in_dim=64 if a.smoke else 4096,
        vec_in_dim=32 if a.smoke else 768,
        attention_backend="math",
    )
    engine = build_engine(ParallelConfig(engine="single"), "cpu")
    model = MMDiT(cfg)
    model, opt = engine.prepare(model, lambda ps: torch.optim.AdamW(ps, lr=1e-5), 1.0, FLUX.blocks(model))
    nparams = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(0)
    inputs = (
        torch.randn(1, 16, 1, 8, 8, generator=g),  # 16 video tokens: the step is dominated by the weights
        torch.rand(1, generator=g),
        torch.randn(1, 8, cfg.context_in_dim, generator=g),
        torch.randn(1, cfg.vec_in_dim, generator=g),
    )

    def train_step() -> float:
        began = time.perf_counter()
        model(*inputs).pow(2).mean().backward()
        engine.step(model, opt)
        return time.perf_counter() - began

    train_step()  # optimizer state exists from here
    step_times, beside = [train_step() for _ in range(2)], []
    results: dict[str, dict[str, list[float]]] = {m: {"block": [], "write": [], "steps": []} for m in ("sync", "async")}
    with tempfile.TemporaryDirectory(dir=a.dir) as scratch:
        step = 0
        for _ in range(rounds):
            for mode in ("sync", "async"):
                step += 1
                timings: dict[str, float] = {}
                writer = CheckpointWriter(
                    engine, StageDir(Path(scratch) / mode), 1, mode == "async", lambda m, _, t=timings: t.update(m)
                )
                began = time.perf_counter()
                block = writer.save(step, model, opt, None, lambda s=step: {"step": s})
                during = 0
                while writer.writing:  # training goes on while the write runs
                    beside.append(train_step())
                    during += 1
                writer.wait(step)
                results[mode]["block"].append(block)
                results[mode]["write"].append(timings.get("checkpoint_write_s", time.perf_counter() - began))
                results[mode]["steps"].append(during)
    state_gib = nparams * 12 / 2**30  # fp32 weights + two AdamW moments
    if rounds > 1:  # the first asynchronous checkpoint allocates the staging buffers the later ones reuse
        results["async, first"] = {k: v[:1] for k, v in results["async"].items()}
        results["async"] = {k: v[1:] for k, v in results["async"].items()}
    med = {m: {k: statistics.median(v) for k, v in r.items()} for m, r in results.items()}
    rows = [
        [
            mode,
            f"{med[mode]['block']:.2f}",
            f"{med[mode]['write']:.2f}",
            f"{med[mode]['steps']:.0f}",
            f"{med['sync']['block'] / med[mode]['block']:.1f}x",
        ]
        for mode in results
    ]
    lines = heading(
        "Checkpoint blocking time, sync vs async (CPU)",
        "python3 -m benchmarks.bench_checkpoint" + (" --smoke" if a.smoke else ""),
        note=(
            f"; {width}-wide MMDiT, {a.double} double + {a.single} single blocks, {nparams / 1e6:.0f}M parameters, "
            f"{state_gib:.1f} GiB weights + AdamW state; single engine; median of {rounds} round(s); training step "
            f"{statistics.median(step_times):.2f} s alone"
            + (f", {statistics.median(beside):.2f} s beside a write" if beside else "")
        ),
    )
    lines += table(
        [
            "checkpoint",
            "training blocked (s)",
            "until published (s)",
            "steps trained during the write",
            "less blocking",
        ],
        rows,
    )
    publish(lines, append=not a.no_append and not a.smoke)


if __name__ == "__main__":
    main()
