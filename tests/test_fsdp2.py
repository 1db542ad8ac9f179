"""The fsdp2 engine with real processes (gloo, 2 ranks on CPU) against a single-process reference:
same loss trajectory, and checkpoints that move between world sizes (2 ranks -> 1, 1 -> 2).

Tolerance: the sharded run averages gradients by reduce-scatter in another order than the single
process's one backward over the whole batch, so the two differ by fp32 rounding (~1e-7 relative per
step), which Adam's normalisation can amplify a little over the steps. 1e-5 relative on the loss is far
below any real divergence (a wrong shard, a missed reduction or a lost optimizer state moves the loss
by 1e-2 or more)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import tiny_mmdit

from opensora_lite.config.schema import ParallelConfig
from opensora_lite.models.flux_weights import load_into, read_flux_weights
from opensora_lite.models.mmdit import MMDiT

STEPS, SAVE_AT, BATCH = 5, 3, 4


def _batch(step: int):
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(BATCH, 4, 3, 4, 6, generator=g)
    return x, torch.rand(BATCH, generator=g), torch.randn(BATCH, 5, 16, generator=g), torch.randn(BATCH, 8, generator=g)


def _engine(kind: str):
    if kind == "fsdp2":
        from opensora_lite.parallel.fsdp2 import FSDP2Engine

        return FSDP2Engine(ParallelConfig(engine="fsdp2", ac_single_blocks=1), "cpu")
    from opensora_lite.parallel.local import LocalEngine

    return LocalEngine(ParallelConfig(engine="single"), "cpu")


def _train(kind: str, first: int, last: int, load: str | None, save: str | None) -> list[float]:
    """Steps first..last-1 on this process's slice of each global batch; the global loss per step."""
    engine = _engine(kind)
    torch.manual_seed(0)
    model = MMDiT(tiny_mmdit(attention_backend="math"))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    if load:  # what the trainer does: full weights (either layout) into the model before wrapping
        folder = Path(load)
        weights = folder / "model.safetensors" if (folder / "model.safetensors").is_file() else folder / "model_dcp"
        load_into(model, read_flux_weights(weights)[0], str(weights))
    model = engine.wrap(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    if load:
        engine.load_optimizer(Path(load), model, opt)
    per = BATCH // engine.world_size
    losses = []
    for step in range(first, last):
        x, t, txt, y = (v[engine.rank * per : (engine.rank + 1) * per] for v in _batch(step))
        loss = (model(x, t, txt, y) - x).pow(2).mean()
        loss.backward()
        engine.clip_grad_norm(model, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(engine.all_reduce_mean(float(loss.detach())))
        if save and step + 1 == SAVE_AT:
            folder = Path(save)
            if engine.is_main:
                folder.mkdir(parents=True, exist_ok=True)
            engine.barrier()
            engine.save_model(folder, model)
            engine.save_optimizer(folder, model, opt)
            engine.barrier()
    engine.shutdown()
    return losses


def _rank_main(rank: int, world: int, port: int, out: str, args: tuple) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    losses = _train("fsdp2", *args)
    if rank == 0:
        Path(out).write_text(json.dumps(losses))


def _two_ranks(tmp_path: Path, *args) -> list[float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / f"losses-{port}.json"
    mp.start_processes(_rank_main, args=(2, port, str(out), args), nprocs=2, start_method="spawn")
    return json.loads(out.read_text())


@pytest.fixture(autouse=True)
def _single_process_env(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert not dist.is_initialized()


def test_fsdp2_matches_the_single_process_reference_and_reshards(tmp_path):
    reference = _train("single", 0, STEPS, None, str(tmp_path / "from1"))
    sharded = _two_ranks(tmp_path, 0, STEPS, None, str(tmp_path / "from2"))
    assert sharded == pytest.approx(reference, rel=1e-5)
    assert reference[-1] < reference[0]  # it trains
    assert (tmp_path / "from2" / "model_dcp" / ".metadata").is_file()  # sharded weights, written by both ranks
    assert (tmp_path / "from1" / "model.safetensors").is_file()

    # 2 ranks -> 1: the single process continues the sharded run's trajectory
    cont1 = _train("single", SAVE_AT, STEPS, str(tmp_path / "from2"), None)
    assert cont1 == pytest.approx(reference[SAVE_AT:], rel=1e-5)
    # 1 rank -> 2: the sharded run continues the single process's trajectory
    cont2 = _two_ranks(tmp_path, SAVE_AT, STEPS, str(tmp_path / "from1"), None)
    assert cont2 == pytest.approx(reference[SAVE_AT:], rel=1e-5)
