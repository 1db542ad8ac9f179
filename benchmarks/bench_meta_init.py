#!/usr/bin/env python3
"""Peak host memory per rank when fsdp2 starts from a Flux checkpoint: today's build against meta-init.

Two real gloo ranks on this machine, each a fresh process, start a stage's model from a BFL safetensors
file: `today` builds the whole model in fp32 on every rank, reads the whole file, loads it, then shards;
`meta-init` (parallel.meta_init) builds on the meta device, shards, and each rank reads its rows of each
tensor from the memory-mapped file. Peak = the process's high-water resident memory (ru_maxrss) after the
model is ready (VmHWM, reset once the process group is up); `above start` subtracts the resident
memory at that point (the Python, torch and process-group baseline). `anonymous, ready` is the growth of
RssAnon once the model is ready: what the rank keeps, without the page-cache pages its memory-mapped
reads mapped (file-backed, shared, reclaimable, but counted in the peak). Equal values: tests/test_meta_init.py.

    python3 -m benchmarks.bench_meta_init                          # Flux width, 2 single blocks: ~2 min, ~6 GiB
    python3 -m benchmarks.bench_meta_init --hidden 1024 --heads 8 --no-append
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import tempfile
from pathlib import Path

import torch
import torch.multiprocessing as mp

from benchmarks.benchlib import heading, publish, table
from opensora_lite.models.flux import SPEC as FLUX
from opensora_lite.models.flux.model import MMDiT, MMDiTConfig  # noqa: E402


def _config(a) -> MMDiTConfig:
    head = a.hidden // a.heads
    t = head // 8
    return MMDiTConfig(
        latent_channels=16,
        patch_size=[1, 2, 2],
        hidden_size=a.hidden,
        num_heads=a.heads,
        depth=a.double,
        depth_single_blocks=a.single,
        axes_dim=[t, (head - t) // 2, (head - t) // 2],
        context_in_dim=a.hidden,
        vec_in_dim=256,
        attention_backend="math",
    )


def _peak_mib() -> float:
    """This process's high-water resident memory (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _anon_mib() -> float:
    """Anonymous resident memory now (RssAnon): without the file pages a memory-mapped read maps."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _reset_peak() -> None:
    """Forget the high-water mark so far (a spawned process inherits its parent's across exec)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _rank(rank: int, port: int, variant: str, weights: str, a, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    import importlib

    for module in ("torch.distributed.checkpoint", "torch.distributed.fsdp", "torch.distributed.tensor._utils"):
        importlib.import_module(module)  # before the baseline: a trainer has imported them by then

    from opensora_lite.config.schema import ParallelConfig
    from opensora_lite.models.flux.weights import read_flux_weights
    from opensora_lite.models.loading import load_into
    from opensora_lite.parallel import build_engine

    engine = build_engine(ParallelConfig(engine="fsdp2", meta_init=variant == "meta-init"), "cpu")
    engine.barrier()
    _reset_peak()
    start, anon = _peak_mib(), _anon_mib()
    torch.manual_seed(0)
    if engine.builds_on_meta:
        with torch.device("meta"):
            model = MMDiT(_config(a))
        model, _ = engine.prepare(model, lambda ps: torch.optim.AdamW(ps), 1.0, FLUX.blocks(model))
        engine.materialize(model, FLUX, Path(weights), 0)
    else:
        model = MMDiT(_config(a))
        load_into(model, read_flux_weights(weights)[0], weights, FLUX.optional_keys())
        model, _ = engine.prepare(model, lambda ps: torch.optim.AdamW(ps), 1.0, FLUX.blocks(model))
    peaks = engine.all_gather_object([start, _peak_mib(), _anon_mib() - anon])
    if rank == 0:
        Path(out).write_text(json.dumps(peaks))
    engine.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=3072)
    p.add_argument("--heads", type=int, default=24)
    p.add_argument("--double", type=int, default=0)
    p.add_argument("--single", type=int, default=2)
    p.add_argument("--no-append", action="store_true")
    a = p.parse_args()
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(key, None)
    with tempfile.TemporaryDirectory() as scratch:
        weights = Path(scratch) / "flux.safetensors"
        torch.manual_seed(1)
        model = MMDiT(_config(a))
        nparams = sum(p.numel() for p in model.parameters())
        from opensora_lite.checkpoint.files import write_safetensors

        write_safetensors(model.state_dict(), weights)
        del model
        rows = []
        for variant in ("today", "meta-init"):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            out = Path(scratch) / f"{variant}.json"
            mp.start_processes(_rank, args=(port, variant, str(weights), a, str(out)), nprocs=2, start_method="spawn")
            peaks = json.loads(out.read_text())
            top = max(peak for _, peak, _ in peaks)
            above = max(peak - start for start, peak, _ in peaks)
            anon = max(a for _, _, a in peaks)
            rows.append([variant, f"{min(p[0] for p in peaks):.0f}", f"{top:.0f}", f"{above:.0f}", f"{anon:.0f}"])
    model_mib = nparams * 4 / 2**20
    lines = heading(
        "fsdp2 start-up: peak host memory per rank, today vs meta-init (CPU, 2 gloo ranks)",
        "python3 -m benchmarks.bench_meta_init",
        note=(
            f"; {a.hidden}-wide MMDiT, {a.double} double + {a.single} single blocks, {nparams / 1e6:.0f}M parameters "
            f"(model {model_mib:.0f} MiB in fp32), initial weights from a BFL safetensors file; the worse rank"
        ),
    )
    lines += table(["build", "start MiB", "peak MiB", "above start MiB", "anonymous, ready MiB"], rows)
    publish(lines, not a.no_append)


if __name__ == "__main__":
    main()
