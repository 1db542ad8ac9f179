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
torch.cuda.max_memory_allocated over the whole run (weights + optimizer state + activations).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from benchmarks.benchlib import REPO, heading, publish, table

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
    torch.manual_seed(0)
    model = MMDiT(cfg)
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", nargs="+", default=ENGINES)
    p.add_argument("--double", type=int, default=2, help="double-stream blocks at Flux width")
    p.add_argument("--single", type=int, default=4, help="single-stream blocks at Flux width")
    p.add_argument("--grid", type=int, nargs=3, default=[33, 16, 16], help="video tokens (t, h, w) after patching")
    p.add_argument("--text-tokens", type=int, default=512)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--ac", type=int, default=0, help="activation-checkpoint this many blocks of each type")
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
    rows = []
    for name in a.engines:
        args = [a_ for a_ in sys.argv[1:] if a_ != "--no-append"]
        env = dict(os.environ)
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
            env.pop(key, None)
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.gpu_engine_step", *args, "--worker", name],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
        )
        found = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode != 0 or not found:
            rows.append([name, "failed", "", "", "", (out.stderr.strip().splitlines() or ["?"])[-1][:120]])
            continue
        r = json.loads(found[0][len("RESULT ") :])
        rows.append(
            [
                name,
                f"{r['params'] / 1e6:.0f}M",
                f"{r['step_ms']:.1f}",
                f"{r['peak_gib']:.2f}",
                f"{r['tflops']:.3g}",
                f"{r['mfu']:.1%}",
            ]
        )
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not a.smoke else "CPU (smoke)"
    lines = heading(f"Engines on one {device}: bf16 step time and peak memory", "python3 -m benchmarks.gpu_engine_step")
    lines += [
        f"torch {torch.__version__}. {a.double} double + {a.single} single blocks at Flux width, "
        f"{'x'.join(map(str, a.grid))} video + {a.text_tokens} text tokens, batch 1, AdamW, AC blocks {a.ac}.",
        "",
    ]
    lines += table(["engine", "params", "step ms (median)", "peak GiB", "TFLOP/s", "MFU"], rows)
    publish(lines, not a.no_append)
    if any(r[1] == "failed" for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
