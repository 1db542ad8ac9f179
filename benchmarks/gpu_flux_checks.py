#!/usr/bin/env python3
"""GPU checks for the Flux MMDiT: bf16 parity with diffusers, and MFU at Flux-dev width.

1. Parity: for several small random configs, diffusers' FluxTransformer2DModel and our MMDiT with the
   same (converted) weights, both in bf16 on the GPU, against an fp32 reference of the same weights.
   Reports each model's relative error to fp32 and their distance from each other.
2. MFU: a stack of FLUX.1-dev-width blocks (3072 hidden, 24 heads) at 256px x 33 latent frames
   (16 x 16 x 33 = 8448 video tokens + 512 T5 tokens), bf16, forward + backward timed with CUDA events.
   FLOPs from the analytic counter (models/flops.py), MFU against the device's datasheet peak. Our model
   and diffusers' side by side, same weights, same step; ours also with each MFU switch and with both
   (`parallel.compile`: each block compiled; `model.fused_qk_norm_rope`).

Every model is built once, on the device (diffusers' there; ours on meta, then allocated there and
loaded). Rows are published as they are measured (benchlib.Report): the parity rows, the eager MFU rows,
then the compiled ones, whose compile cost is measured first on a narrow model; a row whose measured
estimate does not fit before the suite's cap (OSL_PART_DEADLINE, or --budget-s) is listed, not started.

    python3 -m benchmarks.gpu_flux_checks                    # on an H100/H200: ~2 min, appends to docs/benchmarks.md
    python3 -m benchmarks.gpu_flux_checks --smoke --no-append  # tiny shapes on CPU: checks the script runs
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
from diffusers.utils import logging as diffusers_logging

from benchmarks.benchlib import Budget, Report
from benchmarks.fluxpair import make_inputs, pair, run_ours, run_ref
from opensora_lite.models.attention import choose_kernels, resolve_backend
from opensora_lite.models.flops import peak_tflops
from opensora_lite.models.flux import SPEC as FLUX
from opensora_lite.models.flux.flops import mmdit_flops
from opensora_lite.models.flux.model import MMDiT
from opensora_lite.parallel.checkpointing import apply_activation_checkpointing, compile_blocks

PARITY_CONFIGS = [  # (double, single, heads, head_dim, axes, guidance)
    (1, 1, 2, 64, (8, 28, 28), False),
    (2, 2, 4, 128, (16, 56, 56), True),
    (2, 4, 8, 128, (16, 56, 56), False),
]


def rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def parity(device, dtype, grid, text_tokens, report: Report, budget: Budget) -> None:
    """One row per config, published as it is measured (each pair built on the device)."""
    report.table(
        [
            "config",
            "ours fp32 vs diffusers fp32",
            "ours bf16 vs fp32",
            "diffusers bf16 vs fp32",
            "ours vs diffusers (bf16)",
        ]
    )
    took: list[float] = []
    for spec in PARITY_CONFIGS:
        d, s, h, hd, _, gd = spec
        name = f"{d}+{s} blocks, {h} heads x {hd}, guidance {gd}"
        if not budget.fits(max(took, default=None)):
            report.row([name, budget.why_not(max(took)), "", "", ""])
            continue
        began = time.perf_counter()
        ours, ref = pair(*spec, text_dim=256, vec_dim=64, device=device)
        x32 = make_inputs(grid, text_tokens, 256, 64, spec[5], device, torch.float32)
        xlo = make_inputs(grid, text_tokens, 256, 64, spec[5], device, dtype)
        with torch.no_grad():
            gold = run_ref(ref, x32)
            ours_fp32 = run_ours(ours, x32)
            ours.to(dtype), ref.to(dtype)
            o, r = run_ours(ours, xlo), run_ref(ref, xlo)
        errors = [rel(ours_fp32, gold), rel(o, gold), rel(r, gold), rel(o, r)]
        report.row(
            [name, f"{errors[0]:.1e}", *(f"{e:.2e}" for e in errors[1:])],
            ours_fp32=errors[0], ours_bf16=errors[1], diffusers_bf16=errors[2], ours_vs_diffusers=errors[3],
        )  # fmt: skip
        del ours, ref
        took.append(time.perf_counter() - began)


def timed_step(fn, model, x, iters, device) -> tuple[float, float]:
    """(median seconds of forward + backward after two warm-up steps, wall seconds of it all incl. the
    warm-up: a compiled model compiles there); loss = mean square of the output."""
    times = []
    began = time.perf_counter()
    for i in range(iters + 2):
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(model, x).float().pow(2).mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # two warm-up steps
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], time.perf_counter() - began


# rows in publishing order: (name, model.fused_qk_norm_rope (None: diffusers'), parallel.compile); the eager
# rows first, the compiled ones (the least known cost: inductor's compile) last
VARIANTS = [
    ("opensora_lite", False, False),
    ("diffusers", None, False),
    ("ours + model.fused_qk_norm_rope", True, False),
    ("ours + parallel.compile", False, True),
    ("ours + both", True, True),
]


def with_switch(cfg, state: dict, fused: bool) -> MMDiT:
    """Our model holding `state` with model.fused_qk_norm_rope = `fused` (built on meta: no init work; the
    weights are `state`'s tensors, on its device)."""
    with torch.device("meta"):
        model = MMDiT(replace(cfg, fused_qk_norm_rope=fused))
    model.load_state_dict(state, assign=True)
    return model


def compile_probe_s(a, device, dtype) -> float:
    """Seconds to compile (and run twice) one double and one single block of a narrow model with the
    compiled rows' backend: the compile's cost, measured on this machine before a compiled row is started
    (graph size, not width, sets it)."""
    began = time.perf_counter()
    ours, _ = pair(1, 1, 2, 32, (8, 12, 12), False, 64, 32, device=device)
    ours.to(dtype)
    compile_blocks(FLUX.blocks(ours), a.compile_backend)
    x = make_inputs([1, 4, 4], 8, 64, 32, False, device, dtype)
    for _ in range(2):
        run_ours(ours, x).float().pow(2).mean().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - began


def mfu(device, dtype, a, report: Report, budget: Budget) -> None:
    text_dim, vec_dim = (4096, 768) if not a.smoke else (64, 32)
    heads, head_dim, axes = (24, 128, (16, 56, 56)) if not a.smoke else (2, 32, (8, 12, 12))
    ours, ref = pair(a.double, a.single, heads, head_dim, axes, False, text_dim, vec_dim, device=device)
    x = make_inputs(a.grid, a.text_tokens, text_dim, vec_dim, False, device, dtype)
    tokens = a.grid[0] * a.grid[1] * a.grid[2]
    flops = mmdit_flops(ours.cfg, tokens, a.text_tokens).train
    peak = peak_tflops(device, "bf16" if dtype == torch.bfloat16 else "tf32")
    kernel = resolve_backend("auto", x["img"].new_empty(1, 1, 1, 1))
    report.text(
        f"MFU: {a.double} double + {a.single} single blocks at hidden {heads * head_dim}, {tokens} video "
        f"({'x'.join(map(str, a.grid))}) + {a.text_tokens} text tokens, batch 1, {dtype}, our attention kernel "
        f"{kernel}, {flops / 1e12:.3g} TFLOPs per step (analytic), peak {peak} TFLOP/s; each model built on the "
        f"device; compiled rows: each block on its own, backend {a.compile_backend}, the compile inside the 2 "
        "warm-up steps, started only when the measured compile cost fits before the cap."
    )
    report.table(["model", "fwd+bwd ms (median)", "TFLOP/s", "MFU", "wall s incl. warm-up"])
    state, cfg = ours.state_dict(), ours.cfg  # fp32 on the device; each of our rows: a model holding it
    del ours
    results, walls, compile_s = {}, {}, None
    for name, fused, compiled in VARIANTS:
        estimate = max(walls.values(), default=None)
        if compiled:
            if compile_s is None and budget.fits(estimate):
                compile_s = compile_probe_s(a, device, dtype)
            estimate = (estimate or 0.0) + (compile_s or 0.0)
        if not budget.fits(estimate):
            report.row([name, budget.why_not(estimate), "", "", ""])
            continue
        if fused is None:
            model, fn = ref, run_ref
        else:
            model, fn = with_switch(cfg, state, fused), run_ours
        model.to(device, dtype).train()
        if fused is not None and a.ac:
            apply_activation_checkpointing(FLUX.blocks(model), {"double_blocks": a.double, "single_blocks": a.single})
        if fused is not None:
            choose_kernels(model, device)  # as the engine does, before compile
        if compiled:
            compile_blocks(FLUX.blocks(model), a.compile_backend)  # after AC, as the engine does
        seconds, walls[name] = timed_step(fn, model, x, a.iters, device)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        results[name] = seconds
        tflops = flops / seconds / 1e12
        share = f"{tflops / peak:.1%}" if peak else "n/a"
        report.row(
            [name, f"{seconds * 1000:.1f}", f"{tflops:.3g}", share, f"{walls[name]:.1f}"],
            step_s=seconds, tflops=tflops, mfu=tflops / peak if peak else None, wall_s=walls[name],
        )  # fmt: skip
        if name == "diffusers":
            report.row(["ratio ours/diffusers", f"{results['opensora_lite'] / seconds:.3f}", "", "", ""])
            del ref


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes, CPU allowed: checks that the script runs")
    p.add_argument("--double", type=int, default=2)
    p.add_argument("--single", type=int, default=4)
    p.add_argument("--grid", type=int, nargs=3, default=[33, 16, 16], help="video tokens (t, h, w)")
    p.add_argument("--text-tokens", type=int, default=512)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--ac", action="store_true", help="activation checkpointing on our model's blocks")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the compiled rows")
    p.add_argument("--budget-s", type=float, default=float("inf"), help="start no row that cannot end by then")
    p.add_argument("--no-append", action="store_true")
    a = p.parse_args()
    budget = Budget(a.budget_s)
    diffusers_logging.set_verbosity_error()  # its dtype-cast advice repeats for every model
    device = torch.device("cuda" if torch.cuda.is_available() and not a.smoke else "cpu")
    if device.type != "cuda" and not a.smoke:
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --smoke to check the script on CPU")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if a.smoke:
        a.grid, a.text_tokens, a.iters, a.double, a.single = [2, 4, 4], 8, 1, 1, 1
        a.compile_backend = "eager"  # inductor takes minutes on a CPU; eager still captures each block
    parity_grid, parity_text = ([3, 8, 8], 64) if not a.smoke else ([1, 2, 2], 4)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke)"
    report = Report(f"Flux MMDiT on {name}: bf16 parity and MFU", "python3 -m benchmarks.gpu_flux_checks",
                    append=not a.no_append)  # fmt: skip
    report.text(
        f"torch {torch.__version__}. Parity: {'x'.join(map(str, parity_grid))} video + {parity_text} text tokens."
    )
    parity(device, dtype, parity_grid, parity_text, report, budget)
    mfu(device, dtype, a, report, budget)
    report.close()


if __name__ == "__main__":
    main()
