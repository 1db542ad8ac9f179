"""Every engine with real processes (gloo, 2 ranks on CPU) against a single-process reference: the same
loss trajectory (with 2 accumulated micro-batches per step and gradient clipping), a checkpoint saved
mid-run resumes the same trajectory, and fsdp2 checkpoints move between world sizes (2 ranks -> 1, 1 -> 2).
Each engine's shutdown releases every process group it and its backend made (their threads end there).
ColossalAI runs its own ZeRO code with a test-only shim for the CUDA stream calls (tests/colossalai_cpu).

Tolerance: a sharded run averages gradients by reduce-scatter/all-reduce in another order than the single
process's one backward over the whole batch, so the two differ by fp32 rounding (~1e-7 relative per
step), which Adam's normalisation can amplify a little over the steps. 1e-5 relative on the loss is far
below any real divergence (a wrong shard, a missed reduction, a lost accumulation micro-batch or optimizer
state moves the loss by 1e-2 or more). colossalai_hybrid_sp's ZeRO needs bf16 weights: its trajectory is
compared at 2e-2 (bf16 keeps 8 mantissa bits, ~4e-3 relative per rounding) and must also be closer to
the reference than the reference's own first-step change, so a broken reduction still fails.
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_mmdit, two_ranks

from opensora_lite.config.schema import ParallelConfig
from opensora_lite.models.flux import SPEC as FLUX
from opensora_lite.models.flux.model import MMDiT
from opensora_lite.models.flux.weights import read_flux_weights
from opensora_lite.models.loading import load_into

STEPS, SAVE_AT, BATCH, ACCUM = 5, 3, 4, 2
SHIM = Path(__file__).parent / "colossalai_cpu"
ENGINES = {  # engine -> (parallel config, loss tolerance)
    "fsdp2": (dict(ac_blocks={"single_blocks": 1}), 1e-5),
    "deepspeed_zero2": ({}, 1e-5),
    "deepspeed_zero3": ({}, 1e-5),
    "colossalai_zero2": ({}, 1e-5),
    "colossalai_hybrid_sp": (dict(sp_size=2, param_dtype="bf16"), 2e-2),
}


def _batch(step: int, micro: int):
    g = torch.Generator().manual_seed(100 + 10 * step + micro)
    x = torch.randn(BATCH, 4, 3, 4, 6, generator=g)
    return x, torch.rand(BATCH, generator=g), torch.randn(BATCH, 5, 16, generator=g), torch.randn(BATCH, 8, generator=g)


def _engine(kind: str):
    from opensora_lite.parallel import build_engine

    extra = ENGINES[kind][0] if kind in ENGINES else {}
    return build_engine(ParallelConfig(engine=kind, **extra), "cpu")


def _train(
    kind: str, first: int, last: int, load: str | None, save: str | None, background: bool = False
) -> list[float]:
    """Steps first..last-1 on this process's slice of each global batch; the global loss per step.
    `background`: the checkpoint is written by save_async while the remaining steps train."""
    engine = _engine(kind)
    torch.manual_seed(0)
    model = MMDiT(tiny_mmdit(attention_backend="math"))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    model.set_sequence_parallel(engine.sp)
    if load:  # what the trainer does: full weights (either layout) into the model before wrapping
        folder = Path(load)
        weights = folder / "model.safetensors" if (folder / "model.safetensors").is_file() else folder / "model_dcp"
        load_into(model, read_flux_weights(weights)[0], str(weights), FLUX.optional_keys())
    model, opt = engine.prepare(model, lambda params: torch.optim.AdamW(params, lr=1e-3), 0.5, FLUX.blocks(model))
    if load:
        engine.load_optimizer(Path(load), model, opt)
    per = BATCH // engine.dp_size
    scale = engine.sp.loss_scale if engine.sp else 1.0
    losses, writes = [], []
    for step in range(first, last):
        total = 0.0
        for micro in range(ACCUM):
            x, t, txt, y = (v[engine.dp_rank * per : (engine.dp_rank + 1) * per] for v in _batch(step, micro))
            x, t, txt, y = (v.to(engine.device) for v in (x, t, txt, y))
            loss = (model(x, t, txt, y).float() - x).pow(2).mean()
            engine.backward(model, loss * scale / ACCUM, sync=micro == ACCUM - 1)
            total += float(loss.detach()) / ACCUM
        engine.step(model, opt)
        losses.append(engine.all_reduce_mean(total))
        if save and step + 1 == SAVE_AT:
            folder = Path(save)
            if engine.is_main:
                folder.mkdir(parents=True, exist_ok=True)
            engine.barrier()
            if background:
                writes = engine.save_async(folder, model, opt)
                continue
            engine.save_model(folder, model)
            engine.save_optimizer(folder, model, opt)
            engine.barrier()
    for write in writes:  # the later steps changed the weights meanwhile: the checkpoint holds step SAVE_AT's
        write.result()
    engine.shutdown()
    return losses


def _rank_main(kind: str, args: tuple) -> list[float]:
    if kind.startswith("colossalai"):
        sys.path.insert(0, str(SHIM))
        import sitecustomize

        sitecustomize.install()
    return _train(kind, *args)


def _two_ranks(tmp_path: Path, kind: str, *args) -> list[float]:
    return two_ranks(_rank_main, tmp_path, kind, args)


pytestmark = pytest.mark.usefixtures("single_process_env")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[list[float], Path]:
    """The single-process trajectory, and its checkpoint at SAVE_AT."""
    folder = tmp_path_factory.mktemp("reference") / "ckpt"
    losses = _train("single", 0, STEPS, None, str(folder))
    assert losses[-1] < losses[0]  # it trains
    return losses, folder


@pytest.mark.parametrize("kind", list(ENGINES))
def test_engine_matches_the_single_process_reference_and_resumes(kind, reference, tmp_path, monkeypatch):
    ref, _ = reference
    tol = ENGINES[kind][1]
    extensions = tmp_path / "torch_extensions"  # the ranks' JIT-extension cache, empty as on a new machine
    extensions.mkdir()
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(extensions))
    run = _two_ranks(tmp_path, kind, 0, STEPS, None, str(tmp_path / "ckpt"))
    if kind.startswith("deepspeed"):  # its shm_comm op (minutes of compiling, a lock all ranks wait on) is not built
        assert [p.name for p in extensions.iterdir()] == []
    assert run == pytest.approx(ref, rel=tol)
    if tol > 1e-5:  # bf16: still far closer than one step of training moves the loss
        assert max(abs(a - b) for a, b in zip(run, ref)) < abs(ref[1] - ref[0])
    resumed = _two_ranks(tmp_path, kind, SAVE_AT, STEPS, str(tmp_path / "ckpt"), None)
    assert resumed == pytest.approx(run[SAVE_AT:], rel=tol)
    # the gathered weights are the full model, readable by every engine and by osl-export
    weights, _ = read_flux_weights(tmp_path / "ckpt" / ("model_dcp" if kind == "fsdp2" else "model.safetensors"))
    assert weights.keys() == MMDiT(tiny_mmdit()).state_dict().keys()


def test_fsdp2_checkpoints_move_between_world_sizes(reference, tmp_path):
    ref, from1 = reference
    _two_ranks(tmp_path, "fsdp2", 0, SAVE_AT, None, str(tmp_path / "from2"))
    assert (tmp_path / "from2" / "model_dcp" / ".metadata").is_file()  # sharded weights, written by both ranks
    # 2 ranks -> 1: the single process continues the sharded run's trajectory
    cont1 = _train("single", SAVE_AT, STEPS, str(tmp_path / "from2"), None)
    assert cont1 == pytest.approx(ref[SAVE_AT:], rel=1e-5)
    # 1 rank -> 2: the sharded run continues the single process's trajectory
    cont2 = _two_ranks(tmp_path, "fsdp2", SAVE_AT, STEPS, str(from1), None)
    assert cont2 == pytest.approx(ref[SAVE_AT:], rel=1e-5)


@pytest.mark.parametrize("kind", ["fsdp2", "ddp"])
def test_background_checkpoint_holds_the_state_of_its_step_while_training_goes_on(kind, reference, tmp_path):
    """stage.async_checkpoint's write (DCP async_save, on gloo groups of its own) beside two more training
    steps on 2 ranks: the checkpoint continues the reference trajectory from SAVE_AT."""
    ref, _ = reference
    run = _two_ranks(tmp_path, kind, 0, STEPS, None, str(tmp_path / "ckpt"), True)
    assert run == pytest.approx(ref, rel=1e-5)
    assert (tmp_path / "ckpt" / "model_dcp" / ".metadata").is_file()
    cont = _train("single", SAVE_AT, STEPS, str(tmp_path / "ckpt"), None)
    assert cont == pytest.approx(ref[SAVE_AT:], rel=1e-5)


def _threads() -> list[str]:
    """This process's native threads, by name (gloo's workers and loop, the store's server on rank 0)."""
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            names.append(Path(f"/proc/self/task/{task}/comm").read_text().strip())
        except OSError:  # a thread that ended meanwhile
            pass
    return sorted(names)


SHUTDOWN_CASES = {  # case -> parallel config
    "ddp": dict(engine="ddp"),
    "ddp_sp": dict(engine="ddp", sp_size=2),  # + sequence-parallel groups and a background checkpoint's groups
    "fsdp2": dict(engine="fsdp2"),
    "deepspeed_zero2": dict(engine="deepspeed_zero2"),
    "deepspeed_zero3": dict(engine="deepspeed_zero3"),
    "colossalai_hybrid_sp": dict(engine="colossalai_hybrid_sp", sp_size=2, param_dtype="bf16"),
}


def _threads_left(case: str, folder: str) -> dict:
    """A tiny model through engine.prepare and one step, the model dropped as the trainer drops a finished
    stage's, then engine.shutdown() with the engine kept (the run's Runtime keeps it); threads before/after."""
    from opensora_lite.parallel import build_engine

    if case.startswith("colossalai"):
        sys.path.insert(0, str(SHIM))
        import sitecustomize

        sitecustomize.install()
    before = _threads()
    engine = build_engine(ParallelConfig(**SHUTDOWN_CASES[case]), "cpu")
    dtype = torch.bfloat16 if engine.cfg.param_dtype == "bf16" else torch.float32
    model = torch.nn.Linear(4, 4).to(dtype)
    model, opt = engine.prepare(model, lambda params: torch.optim.AdamW(params, lr=1e-3), 0.5, {})
    engine.backward(model, model(torch.randn(2, 4, dtype=dtype)).float().pow(2).mean())
    engine.step(model, opt)
    if case == "ddp_sp":
        for write in engine.save_async(Path(folder) / "ckpt", model, opt):
            write.result()
    del model, opt
    engine.shutdown()
    gc.collect()
    after = _threads()
    assert after == before, f"rank {os.environ['RANK']}: threads {before} before the engine, {after} after shutdown"
    return {"before": before, "after": after}


@pytest.mark.parametrize("case", list(SHUTDOWN_CASES))
def test_shutdown_releases_every_process_group_and_its_threads(case, tmp_path):
    """engine.shutdown() leaves no process group alive: each one's gloo threads (and rank 0's store
    server) end there, after the ranks' last barrier, not at interpreter exit, where each rank would tear
    them down on its own (issue 27: a rank died at exit, "terminate called without an active exception").
    Held past destroy_process_group were: the default group by torch.distributed.nn.functional's default
    arguments (imported after init), DeepSpeed's copy of the world group and its models (autograd hooks,
    ZeRO-3's module-level state), FSDP2's device mesh by DTensor's caches; the engine's own groups and
    ColossalAI's plugin by the engine."""
    threads = two_ranks(_threads_left, tmp_path, case, str(tmp_path))  # rank 0's (each rank asserts its own)
    assert threads["after"] == threads["before"]
