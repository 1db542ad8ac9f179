#!/usr/bin/env python3
"""One-GPU training steps through each engine: step time and peak memory, bf16, Flux width.

Each engine runs in its own process (fresh CUDA context and process group) on the same model, the same
inputs and the same optimizer (AdamW): FLUX.1-dev-width blocks (3072 hidden, 24 heads) at 256px x 33
frames (33 x 16 x 16 = 8448 video tokens after 2x2 patches of a 4x8x8 latent) + 512 T5 tokens, batch 1.
What each engine does on one GPU is what it would do per GPU with one rank: fsdp2 trains the plain
model under bf16 autocast (fp32 weights; nothing to shard), colossalai_zero2 keeps bf16 weights with
fp32 masters in its optimizer, the DeepSpeed engines the same with DeepSpeed's bf16 mode.

    python3 -m benchmarks.gpu_engine_step                       # H100/H200: fsdp2 and colossalai_zero2
    python3 -m benchmarks.gpu_engine_step --engines fsdp2 deepspeed_zero2 --double 4 --single 8
    python3 -m benchmarks.gpu_engine_step --smoke --no-append   # tiny model on CPU: checks the script runs

ColossalAI on a GPU machine: install it as docs/engines/colossalai.md says (wheels travel to machines
without a registry). Median step time over --iters steps after 2 warm-up steps; peak memory is
torch.cuda.max_memory_allocated over the whole run (weights + optimizer state + activations). With
--ac-rows (the suite's part), two rows follow: fsdp2 on 1 + 2 blocks at 768px x 129 frames, activation
checkpointing off and on. Each row is published as it returns; a row whose estimate (the longest row
before it) does not fit before the cap is listed, not started.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from benchmarks.benchlib import REPO, Budget, Report

ENGINES = ["fsdp2", "colossalai_zero2"]


def worker(a) -> dict:
    from opensora_lite.config.schema import ParallelConfig
    from opensora_lite.models.flops import peak_tflops
    from opensora_lite.models.flux import SPEC as FLUX
    from opensora_lite.models.flux.flops import mmdit_flops
    from opensora_lite.models.flux.model import MMDiT, MMDiTConfig
    from opensora_lite.parallel import build_engine

    cuda = torch.cuda.is_available() and not a.smoke
    width = (24, 128, (16, 56, 56), 4096, 768) if not a.smoke else (2, 32, (8, 12, 12), 64, 32)
    heads, head_dim, axes, text_dim, vec_dim = width
    cfg = MMDiTConfig(
        latent_channels=16,
        patch_size=[1, 2, 2],
        hidden_size=heads * head_dim,
        num_heads=heads,
        depth=a.double,
        depth_single_blocks=a.single,
        axes_dim=list(axes),
        context_in_dim=text_dim,
        vec_in_dim=vec_dim,
    )
    engine = build_engine(
        ParallelConfig(
            engine=a.worker,
            param_dtype="bf16" if cuda else "fp32",
            ac_blocks={"double_blocks": a.ac, "single_blocks": a.ac},
        ),
        "cuda" if cuda else "cpu",
    )
    with torch.device("meta"):  # built once, on the device: a CPU init of Flux-width blocks takes ~20 s
        model = MMDiT(cfg)
    model.to_empty(device=engine.device)
    with torch.no_grad():
        g = torch.Generator(engine.device).manual_seed(0)
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=g)
    nparams = sum(p.numel() for p in model.parameters())
    make_opt = lambda params: torch.optim.AdamW(params, lr=1e-5, fused=cuda)  # noqa: E731
    model, opt = engine.prepare(model, make_opt, 1.0, FLUX.blocks(model))
    dev = engine.device
    t, h, w = a.grid
    x = torch.randn(1, 16, t, 2 * h, 2 * w, device=dev)
    inputs = (
        x,
        torch.rand(1, device=dev),
        torch.randn(1, a.text_tokens, text_dim, device=dev),
        torch.randn(1, vec_dim, device=dev),
    )
    times = []
    for i in range(a.iters + 2):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            loss = (model(*inputs).float() - x).pow(2).mean()
        engine.backward(model, loss)
        engine.step(model, opt)
        if cuda:
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    flops = mmdit_flops(cfg, t * h * w, a.text_tokens).train
    peak = peak_tflops(dev, "bf16" if cuda else "fp32")
    engine.shutdown()
    return {
        "engine": a.worker,
        "params": nparams,
        "step_ms": seconds * 1000,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
        "tflops": flops / seconds / 1e12,
        "mfu": flops / seconds / 1e12 / peak if peak else float("nan"),
        "loss": float(loss),
    }


def run_row(a, engine: str, extra: list[str], timeout: float) -> dict | str:
    """One worker process (fresh CUDA context and process group): its result, or why it has none."""
    args = [x for x in sys.argv[1:] if x not in ("--no-append", "--ac-rows")]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    cmd = [sys.executable, "-m", "benchmarks.gpu_engine_step", *args, *extra, "--worker", engine]
    limit = None if timeout == float("inf") else max(1.0, timeout)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=limit)
    except subprocess.TimeoutExpired:
        return "stopped at the cap"
    found = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not found:
        return "failed: " + (out.stderr.strip().splitlines() or ["?"])[-1][:110].replace("|", "/")
    return json.loads(found[0][len("RESULT ") :])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", nargs="+", default=ENGINES)
    p.add_argument("--double", type=int, default=2, help="double-stream blocks at Flux width")
    p.add_argument("--single", type=int, default=4, help="single-stream blocks at Flux width")
    p.add_argument("--grid", type=int, nargs=3, default=[33, 16, 16], help="video tokens (t, h, w) after patching")
    p.add_argument("--text-tokens", type=int, default=512)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--ac", type=int, default=0, help="activation-checkpoint this many blocks of each type")
    p.add_argument("--ac-rows", action="store_true", help="then fsdp2 at 768px x 129 frames, AC off and on")
    p.add_argument("--budget-s", type=float, default=float("inf"), help="start no row that cannot end by then")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: checks that the script runs")
    p.add_argument("--no-append", action="store_true")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.smoke:
        a.grid, a.text_tokens, a.iters, a.double, a.single = [2, 2, 2], 8, 1, 1, 1
    if a.worker:
        print("RESULT " + json.dumps(worker(a)), flush=True)
        return
    if not torch.cuda.is_available() and not a.smoke:
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --smoke to check the script on CPU")
    budget = Budget(a.budget_s)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not a.smoke else "CPU (smoke)"
    report = Report(f"Engines on one {device}: bf16 step time and peak memory", "python3 -m benchmarks.gpu_engine_step",
                    append=not a.no_append)  # fmt: skip
    report.text(
        f"torch {torch.__version__}. Each row a fresh process; the model built on the device (meta, then "
        "allocated there); AdamW; batch 1; median step after 2 warm-up steps; peak = max allocated. Engine rows: "
        f"{a.double} double + {a.single} single blocks at Flux width, {'x'.join(map(str, a.grid))} video + "
        f"{a.text_tokens} text tokens, AC blocks {a.ac}."
    )
    rows = [(name, name, []) for name in a.engines]
    if a.ac_rows:  # 768px x 129 frames: 33 latent frames x 48 x 48 tokens after 2x2 patches of a 96 x 96 latent
        big = ["--double", "1", "--single", "2", "--iters", "3"] + (["--grid", "33", "48", "48"] if not a.smoke else [])
        at = "768px" if not a.smoke else "smoke size"
        rows += [
            (f"fsdp2, 1+2 blocks at {at}, AC off", "fsdp2", big),
            (f"fsdp2, 1+2 blocks at {at}, AC 2+2", "fsdp2", [*big, "--ac", "2"]),
        ]
        report.text("AC rows: 1 double + 2 single blocks at 768px x 129 frames (33 x 48 x 48 = 76k video tokens).")
    report.table(["row", "params", "step ms (median)", "peak GiB", "TFLOP/s", "MFU"])
    failed, walls = False, []
    for label, engine, extra in rows:
        estimate = max(walls, default=None)
        if not budget.fits(estimate):
            report.row([label, budget.why_not(estimate), "", "", "", ""])
            continue
        began = time.perf_counter()
        r = run_row(a, engine, extra, budget.left())
        walls.append(time.perf_counter() - began)
        if isinstance(r, str):
            failed = True
            report.row([label, r, "", "", "", ""])
            continue
        report.row(
            [label, f"{r['params'] / 1e6:.0f}M", f"{r['step_ms']:.1f}", f"{r['peak_gib']:.2f}", f"{r['tflops']:.3g}",
             f"{r['mfu']:.1%}"],
            **r,
        )  # fmt: skip
    report.close()
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
