"""Engines under torchrun with 2 gloo processes, started by slurm/stage_1node.sbatch (run by bash on
this node, as a Slurm node would run it): the stage trains, checkpoints, evaluates and writes one
result; an interrupted fsdp2 stage resumes from its sharded checkpoint to the same weights.
(Loss parity with a single-process reference: tests/test_fsdp2.py.)"""

import json
import os
import shutil
import socket
import subprocess

import pytest
import torch
from conftest import BIN, REPO, mini_overrides

from opensora_lite.train.state import load_weights


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(overrides, cwd):
    cmd = ["bash", str(REPO / "slurm" / "stage_1node.sbatch"), *overrides]
    env = dict(os.environ, SLURM_SUBMIT_DIR=str(REPO), SLURM_GPUS_ON_NODE="2", MASTER_PORT=str(_free_port()))
    env["OSL_VENV"] = str(BIN.parent)  # the environment running these tests
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.parametrize("engine", ["ddp", "fsdp2"])
def test_two_process_stage(shapes_dir, tmp_path, engine):
    overrides = [
        *mini_overrides(shapes_dir, tmp_path, name=engine),
        f"parallel={engine}",
        "run.stage=image",
        "curriculum.stages.image.log_every=1",
        "curriculum.stages.image.checkpoint_every=2",
        "sample.batch_size=4",
    ]
    _launch(overrides, tmp_path)
    run_dir = tmp_path / engine
    final = run_dir / "image" / "final"
    assert (final / "model.safetensors").is_file()
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert [s["step"] for s in steps if "event" not in s] == [1, 2, 3, 4]  # rank 0 alone writes metrics
    assert "2 processes" in (run_dir / "logs" / "train.log").read_text()
    summary = json.loads((final / "summary.json").read_text())
    assert "colour_acc" in summary["metrics"]  # sampled from the gathered weights on rank 0
    ckpt = run_dir / "image" / "checkpoints" / "step_00000002"
    assert (ckpt / "optim_dcp" / ".metadata").is_file()
    if engine == "ddp":
        return
    assert (ckpt / "model_dcp" / ".metadata").is_file() and not (ckpt / "model.safetensors").exists()
    # interrupt after the step-2 checkpoint: the resumed run reaches the same final weights
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy / engine)
    shutil.rmtree(copy / engine / "image" / "final")
    _launch([*overrides, f"run.root={copy}"], tmp_path)
    a, b = (
        load_weights(final / "model.safetensors"),
        load_weights(copy / engine / "image" / "final" / "model.safetensors"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed fsdp2 run diverged"
    log = (copy / engine / "logs" / "train.log").read_text()
    assert "resumed from" in log


@pytest.mark.parametrize("engine", ["ddp", "fsdp2"])
def test_sequence_parallel_stage_matches_one_process(shapes_dir, tmp_path, engine):
    """2 processes as one SP group (sp_size=2) train on the same batches as one process holding all the
    tokens: the loss trajectory and the weights agree to fp32 rounding."""
    from conftest import compose

    from opensora_lite.cli.curriculum import run

    common = [
        "run.stage=image",
        "curriculum.stages.image.log_every=1",
        "curriculum.stages.image.evaluate=false",
        "curriculum.stages.image.optim.grad_clip=1.0",
    ]
    run(compose([*mini_overrides(shapes_dir, tmp_path / "one", name="one"), *common]))
    _launch(
        [*mini_overrides(shapes_dir, tmp_path, name="sp"), *common, f"parallel={engine}", "parallel.sp_size=2"],
        tmp_path,
    )

    def logged(run_dir, key):
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [r[key] for r in rows if "loss" in r and "event" not in r]

    for key in ("loss", "grad_norm"):  # Adam hides a gradient scale error; the gradient norm does not
        one, sp = logged(tmp_path / "one" / "one", key), logged(tmp_path / "sp", key)
        assert len(one) == len(sp) == 4 and sp == pytest.approx(one, rel=1e-4), key
    a = load_weights(tmp_path / "one" / "one" / "image" / "final" / "model.safetensors")
    b = load_weights(tmp_path / "sp" / "image" / "final" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)
