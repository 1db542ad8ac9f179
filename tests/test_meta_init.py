"""parallel.meta_init: fsdp2 builds the model on the meta device, shards it, and each of 2 real gloo ranks
fills only its shards; deepspeed_zero3 builds it partitioned (zero.Init) and fills it one parameter at a
time. The initial weights must be bitwise those of today's build (the whole model built on every rank,
weights loaded, then sharded): from scratch (the init replayed from the seed), from a BFL file, a
diffusers folder and an Open-Sora 2.0 layout file (memory-mapped row slices, or one parameter's parts
at a time; an I2V model's cond_in, absent from them, zero), and from a DCP folder the trainer writes.
Peak host memory per rank is measured by benchmarks/bench_meta_init.py (test_scripts-style run below)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from conftest import REPO, spawn_ranks, tiny_mmdit

from opensora_lite.checkpoint.files import write_safetensors
from opensora_lite.config.schema import ParallelConfig
from opensora_lite.models.flux import SPEC as FLUX
from opensora_lite.models.flux.model import MMDiT
from opensora_lite.models.flux.opensora_convert import bfl_to_opensora
from opensora_lite.models.flux.weights import read_flux_weights
from opensora_lite.models.loading import load_into

SEED = 1234


def _write_sources(folder: Path) -> None:
    """Weights a T2V stage could start from, each holding the same trained-looking values."""
    import torch.distributed.checkpoint as dcp

    from opensora_lite.models.flux.export import read_architecture, write_diffusers_folder

    torch.manual_seed(7)
    state = {k: torch.randn(v.shape) for k, v in MMDiT(tiny_mmdit()).state_dict().items()}
    write_safetensors(state, folder / "bfl.safetensors")
    arch = read_architecture(state, tiny_mmdit().axes_dim)
    write_diffusers_folder(state, folder / "diffusers", arch, max_shard_bytes=40_000)  # several shards + index
    write_safetensors(bfl_to_opensora(state), folder / "opensora.safetensors")  # split q/k/v, rotate-half rows
    dcp.save(state, checkpoint_id=str(folder / "dcp"), no_dist=True)


def _rank(rank: int, port: int, folder: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    from opensora_lite.parallel import build_engine

    engine = build_engine(ParallelConfig(engine="fsdp2", meta_init=True), "cpu")
    assert engine.builds_on_meta
    out = {}
    for name, path in _sources_paths(Path(folder)).items():
        for i2v in (False, True):
            torch.manual_seed(SEED)  # today: the whole model on every rank, loaded, then sharded
            model = MMDiT(tiny_mmdit(), image_condition=i2v)
            if path is not None:
                load_into(model, read_flux_weights(path)[0], str(path), FLUX.optional_keys())
            today, _ = engine.prepare(model, lambda ps: torch.optim.AdamW(ps), 1.0, FLUX.blocks(model))
            torch.manual_seed(99)  # whatever the RNG holds by then: materialize replays from the seed
            with torch.device("meta"):
                meta = MMDiT(tiny_mmdit(), image_condition=i2v)
            meta, _ = engine.prepare(meta, lambda ps: torch.optim.AdamW(ps), 1.0, FLUX.blocks(meta))
            report = engine.materialize(meta, FLUX, path, SEED)
            local = {n: p.to_local() for n, p in meta.named_parameters()}  # this rank's shard only
            assert all(v.numel() < p.numel() or p.numel() == 1 for v, p in zip(local.values(), meta.parameters()))
            a, b = engine.full_state_dict(today), engine.full_state_dict(meta)
            if rank == 0:
                same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
                out[f"{name}/{'i2v' if i2v else 't2v'}"] = {"same": same, "missing": report.missing}
    if rank == 0:
        (Path(folder) / "result.json").write_text(json.dumps(out))
    engine.shutdown()


def _zero3_rank(rank: int, port: int, folder: str) -> None:
    """deepspeed_zero3: today's build against the partitioned one, compared after one training step (so
    the optimizer's fp32 master copies, made in prepare(), must hold the materialized values too)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    from opensora_lite.parallel import build_engine

    engine = build_engine(ParallelConfig(engine="deepspeed_zero3", meta_init=True), "cpu")
    assert engine.builds_on_meta
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 3, 4, 6, generator=g)
    inputs = (x, torch.rand(1, generator=g), torch.randn(1, 5, 16, generator=g), torch.randn(1, 8, generator=g))

    def trained(model, partitioned: bool) -> dict:
        model, opt = engine.prepare(model, lambda ps: torch.optim.AdamW(ps, lr=1e-2), 1.0, FLUX.blocks(model))
        if partitioned:
            out[f"{name}/{'i2v' if i2v else 't2v'}/missing"] = engine.materialize(model, FLUX, path, SEED).missing
        engine.backward(model, (model(*inputs) - x).pow(2).mean())
        engine.step(model, opt)
        return engine.full_state_dict(model)

    out = {}
    for name, i2v in (("scratch", False), ("bfl", True), ("dcp", False)):
        path = _sources_paths(Path(folder))[name]
        torch.manual_seed(SEED)
        model = MMDiT(tiny_mmdit(), image_condition=i2v)
        if path is not None:
            load_into(model, read_flux_weights(path)[0], str(path), FLUX.optional_keys())
        a = trained(model, False)
        torch.manual_seed(99)  # whatever the RNG holds by then: materialize replays from the seed
        with engine.model_context():
            model = MMDiT(tiny_mmdit(), image_condition=i2v)
        assert sum(p.numel() for p in model.parameters()) == 0  # placeholders: no rank holds the model
        b = trained(model, True)
        if rank == 0:
            out[f"{name}/{'i2v' if i2v else 't2v'}"] = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if rank == 0:
        (Path(folder) / "result.json").write_text(json.dumps(out))
    engine.shutdown()


def _sources_paths(folder: Path) -> dict[str, Path | None]:
    return {
        "scratch": None,
        "bfl": folder / "bfl.safetensors",
        "diffusers": folder / "diffusers",
        "opensora": folder / "opensora.safetensors",
        "dcp": folder / "dcp",
    }


def _two_ranks(fn, tmp_path: Path, monkeypatch) -> dict:
    """fn(rank, port, folder) on 2 spawned ranks over the weight sources in tmp_path; rank 0's result."""
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert not dist.is_initialized()
    _write_sources(tmp_path)
    spawn_ranks(fn, (str(tmp_path),))
    return json.loads((tmp_path / "result.json").read_text())


def test_meta_init_gives_todays_initial_weights_from_every_source(tmp_path, monkeypatch):
    result = _two_ranks(_rank, tmp_path, monkeypatch)
    assert len(result) == 10
    for case, r in result.items():
        assert r["same"], f"meta-device initial weights differ from today's ({case})"
    assert result["bfl/i2v"]["missing"] == ["cond_in.bias", "cond_in.weight"]


def test_meta_init_lowers_each_ranks_peak_host_memory():
    """2 gloo ranks, a 1024-wide model cut to 2 single blocks (37M parameters, 143 MiB in fp32), from a
    BFL file: today's build holds the whole model on each rank, meta-init its half."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_meta_init",
            "--hidden",
            "1024",
            "--heads",
            "8",
            "--no-append",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    above = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"\| (today|meta-init) \| [0-9]+ \| [0-9]+ \| ([0-9]+) \|", proc.stdout)
    }
    model_mib = float(re.search(r"model ([0-9.]+) MiB", proc.stdout).group(1))
    # today: the whole model on each rank; meta-init: half of it, the file pages it maps, one tensor in flight
    assert above["today"] >= model_mib and above["meta-init"] < 0.8 * above["today"], proc.stdout


def test_zero3_meta_init_gives_todays_weights_after_a_step(tmp_path, monkeypatch):
    result = _two_ranks(_zero3_rank, tmp_path, monkeypatch)
    assert {k: v for k, v in result.items() if "missing" not in k} == {
        "scratch/t2v": True,
        "bfl/i2v": True,
        "dcp/t2v": True,
    }
    assert result["bfl/i2v/missing"] == ["cond_in.bias", "cond_in.weight"]  # replayed from the seed
