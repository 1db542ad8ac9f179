"""The second model family through the framework's own machinery: a tiny Wan transformer (diffusers'
WanTransformer3DModel behind models/wan/'s spec) trains a stage with a tiny Wan VAE and a tiny UMT5,
single and under fsdp2 on 2 ranks, with per-block sharding and activation checkpointing asserted on
the modules, and resumes exactly. What Wan cannot do yet is refused at start-up with one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import TORCHRUN, compose, two_ranks, typed

from opensora_lite.checkpoint.files import load_weights
from opensora_lite.errors import ConfigError

BATCH, STEPS = 4, 4


@pytest.fixture(scope="module")
def wan_vae(tmp_path_factory) -> Path:
    """A tiny Wan 2.1 VAE (diffusers AutoencoderKLWan, random weights) as a local folder: 4 channels,
    causal 4x8x8."""
    from opensora_lite.autoencoders.diffusers_vae import random_vae

    folder = tmp_path_factory.mktemp("wan_vae")
    torch.manual_seed(0)
    random_vae("wan", tiny=True, latents_mean=[0.0] * 4, latents_std=[1.0] * 4).save_pretrained(folder)
    return folder


def wan_overrides(data: Path, vae: Path, root: Path, name: str = "wan") -> list[str]:
    """curriculum=tiny_wan: one text-to-video stage of the tiny Wan, 5 frames at 32 px -> 2 x 4 x 4
    latents -> 8 tokens."""
    return [
        f"data.shards={data}",
        "data.aspect_ratios=[0.75,1.0,1.3333]",  # shapes_dir's clips come in three aspect ratios
        f"run.root={root}",
        f"run.name={name}",
        "data.num_workers=0",
        "logger.progress_bar=false",
        "eval.repeats=1",
        "sample.num_steps=2",
        "curriculum=tiny_wan",
        "model=wan_tiny",
        "text_encoder=umt5_tiny",
        "autoencoder=wan",
        f"autoencoder.path={vae}",
        "autoencoder.latent_channels=4",
        "autoencoder.dtype=fp32",
        "autoencoder.tiling=false",
        "run.stage=t2v",
        "curriculum.stages.t2v.ema_decay=0.9",
        "+parallel.ac_blocks.blocks=1",
    ]


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# -- the engine, on fixed batches: 2 fsdp2 ranks against one process -----------------------------
def _train(kind: str) -> dict:
    """STEPS steps of the tiny Wan on this rank's slice of fixed global batches, as test_engines does for
    the MMDiT; the global losses, and what wrap() did to each block, read off the modules."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
    from torch.distributed.fsdp import FSDPModule

    from opensora_lite.config.schema import ParallelConfig
    from opensora_lite.models.wan import SPEC, WanConfig
    from opensora_lite.parallel import build_engine

    engine = build_engine(ParallelConfig(engine=kind, ac_blocks={"blocks": 1}), "cpu")
    torch.manual_seed(0)
    cfg = WanConfig(num_layers=2, num_attention_heads=2, attention_head_dim=16, ffn_dim=64, text_dim=16,
                    freq_dim=32, latent_channels=4, attention_backend="math")  # fmt: skip
    model = SPEC.build(cfg)
    model, opt = engine.prepare(model, lambda ps: torch.optim.AdamW(ps, lr=1e-3), 0.5, SPEC.blocks(model))
    blocks = list(SPEC.blocks(engine.unwrap(model))["blocks"])
    per, losses = BATCH // engine.dp_size, []
    for step in range(STEPS):
        g = torch.Generator().manual_seed(100 + step)
        x, t, txt = (
            torch.randn(BATCH, 4, 2, 4, 4, generator=g),
            torch.rand(BATCH, generator=g),
            torch.randn(BATCH, 6, 16, generator=g),
        )
        x, t, txt = (v[engine.dp_rank * per : (engine.dp_rank + 1) * per] for v in (x, t, txt))
        loss = (SPEC.forward(model, x, t, txt, None).float() - x).pow(2).mean()
        engine.backward(model, loss)
        engine.step(model, opt)
        losses.append(engine.all_reduce_mean(float(loss.detach())))
    out = {
        "losses": losses,
        "sharded": sum(isinstance(b, FSDPModule) for b in blocks),
        "recomputed": sum(isinstance(b, CheckpointWrapper) for b in blocks),
        "counted": [engine.sharded_blocks, engine.recomputed],
    }
    engine.shutdown()
    return out


@pytest.mark.usefixtures("single_process_env")
def test_wan_under_fsdp2_on_two_ranks_equals_one_process_with_every_block_sharded(tmp_path):
    one = _train("single")
    two = two_ranks(_train, tmp_path, "fsdp2")
    assert one["losses"][-1] < one["losses"][0]  # it trains
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5)
    assert (two["sharded"], two["recomputed"], two["counted"]) == (2, 1, [2, 1])  # each block its own unit
    assert (one["sharded"], one["recomputed"]) == (0, 1)  # one process: nothing to shard, AC still applied


# -- the trainer: a stage of the tiny Wan, its resume, and 2 ranks through torchrun ----------------
def test_a_wan_stage_trains_evaluates_and_resumes_exactly(shapes_dir, wan_vae, tmp_path):
    """Through the loop as osl-train runs it: checkpoints every 2 steps, EMA, the end-of-stage samples
    (through the spec's forward). A rerun from the step-2 checkpoint ends on the same weights, bitwise,
    and the metrics read as one run."""
    from opensora_lite.cli.curriculum import run

    overrides = wan_overrides(shapes_dir, wan_vae, tmp_path / "runs")
    (result,) = run(compose(overrides))
    run_dir = tmp_path / "runs" / "wan"
    assert result.metrics["num_clips"] > 0 and torch.isfinite(torch.tensor(result.final_loss))
    (layout,) = [r for r in _records(run_dir) if r.get("event") == "layout"]
    assert (layout["recomputed_blocks"], layout["sharded_blocks"]) == (1, 0)
    assert json.loads((run_dir / "t2v" / "final" / "summary.json").read_text())["steps"] == STEPS

    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "runs", copy)
    shutil.rmtree(copy / "wan" / "t2v" / "final")
    shutil.rmtree(copy / "wan" / "t2v" / "checkpoints" / "step_00000004", ignore_errors=True)
    (resumed,) = run(compose([*overrides, f"run.root={copy}"]))
    assert resumed.resumed_from == 2
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_weights(run_dir / "t2v" / "final" / name), load_weights(copy / "wan" / "t2v" / "final" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    steps = [r["step"] for r in _records(copy / "wan") if "loss" in r]
    assert steps == list(range(1, STEPS + 1))


def test_a_wan_stage_under_torchrun_shards_every_block(shapes_dir, wan_vae, tmp_path):
    """osl-train under torchrun on 2 ranks, parallel=fsdp2: the layout event reports both blocks sharded
    one by one and one recomputed, and the stage trains to its end."""
    overrides = [*wan_overrides(shapes_dir, wan_vae, tmp_path / "runs"), "curriculum.stages.t2v.evaluate=false"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [*TORCHRUN, "--nproc-per-node=2", "-m", "opensora_lite.cli.train", "parallel=fsdp2", *overrides]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    records = _records(tmp_path / "runs" / "wan")
    (layout,) = [r for r in records if r.get("event") == "layout"]
    assert (layout["recomputed_blocks"], layout["sharded_blocks"]) == (1, 2)
    assert [r["step"] for r in records if "loss" in r] == list(range(1, STEPS + 1))
    assert (tmp_path / "runs" / "wan" / "t2v" / "final" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "change,key",
    [
        (["++curriculum.stages.t2v.tasks.i2v_head=0.5"], "curriculum.stages.t2v.tasks"),
        (["parallel=fsdp2", "parallel.sp_size=2"], "parallel.sp_size"),
        (["+parallel.ac_blocks.double_blocks=1"], "parallel.ac_blocks.double_blocks"),
    ],
)
def test_what_wan_cannot_do_yet_is_refused_with_one_line(shapes_dir, wan_vae, tmp_path, change, key):
    with pytest.raises(ConfigError) as info:
        typed([*wan_overrides(shapes_dir, wan_vae, tmp_path), *change])
    assert info.value.key == key and "\n" not in str(info.value)
