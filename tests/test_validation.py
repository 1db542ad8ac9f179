"""Validation during training (stage.validate_every): metrics over steps, samples and contact sheets,
EMA weights, and a training trajectory bitwise the same with or without it (single process; fsdp2,
deepspeed_zero2 and colossalai_zero2 on 2 gloo ranks). Also v2v tasks in training."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO, compose, mini_overrides
from test_ddp_smoke import _torchrun
from wandb_records import read_run

from opensora_lite.checkpoint.files import load_weights
from opensora_lite.cli.curriculum import run


def _i2v_stage(data, root, name: str, *extra: str) -> list[str]:
    """The mini curriculum's I2V stage alone, from scratch, 2 steps with EMA."""
    return [
        *mini_overrides(data, root, name=name),
        "run.stage=i2v",
        "curriculum.stages.i2v.init=none",
        "curriculum.stages.i2v.steps=2",
        "curriculum.stages.i2v.log_every=1",
        "curriculum.stages.i2v.ema_decay=0.9",
        "eval.i2v_clips=2",
        *extra,
    ]


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _same_weights(a_dir, b_dir) -> None:
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_weights(a_dir / "final" / name), load_weights(b_dir / "final" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{name} differs"


def test_validation_logs_metrics_over_steps_and_leaves_training_unchanged(shapes_dir, tmp_path):
    wandb = ["logger=wandb", "logger.wandb.mode=offline"]
    held_out = [f"eval.val_shards={shapes_dir}", "eval.val_batches=1", "eval.val_timesteps=[0.3,0.7]"]
    run(compose(_i2v_stage(shapes_dir, tmp_path, "val", "curriculum.stages.i2v.validate_every=1", *wandb, *held_out)))
    rng_val = torch.random.get_rng_state()
    run(compose(_i2v_stage(shapes_dir, tmp_path, "plain")))
    val, plain = tmp_path / "val", tmp_path / "plain"
    _same_weights(val / "i2v", plain / "i2v")
    # the global torch RNG (a VAE's posterior draws in training) continues as if validation had not run
    assert torch.equal(rng_val, torch.random.get_rng_state())
    losses = [[r["loss"] for r in _rows(d) if "loss" in r and "event" not in r] for d in (val, plain)]
    assert losses[0] == losses[1] and len(losses[0]) == 2

    points = [r for r in _rows(val) if "val/colour_acc" in r]
    assert [r["step"] for r in points] == [1, 2]  # step 1 validation, then the end-of-stage evaluation
    assert points[0]["val/ema"] is True and points[0]["val/seconds"] > 0
    assert "val/i2v_colour_keep" in points[0]
    assert {"val/loss_t0.3", "val/loss_t0.7", "val/loss"} <= set(points[0])  # the held-out flow loss
    assert points[0]["val/loss"] == (points[0]["val/loss_t0.3"] + points[0]["val/loss_t0.7"]) / 2
    folder = val / "i2v" / "validation" / "step_000001"
    assert (folder / "contact_sheet_t2v.png").is_file() and (folder / "contact_sheet_i2v.png").is_file()
    assert list((folder / "samples").glob("t2v_*.mp4")) and list((folder / "samples").glob("i2v_*.mp4"))
    assert not any("val/colour_acc" in r for r in _rows(plain))
    end = next(r for r in _rows(val) if r.get("event") == "stage_end")
    assert end["eval_ema"] is True  # the end-of-stage samples come from the EMA weights too
    (record,) = (val / "wandb").glob("offline-run-*/run-*.wandb")
    history = read_run(record)["history"]
    assert [h["_step"] for h in history if "val/colour_acc" in h] == [r["global_step"] for r in points]
    assert any(h.get("i2v/validation/samples/_type") == "videos" for h in history)
    assert any(h.get("i2v/validation/contact_sheet_i2v/_type") == "image-file" for h in history)
    # the curve as a PNG, from metrics.jsonl alone
    plot = [sys.executable, "-m", "benchmarks.plot_validation", str(val / "metrics.jsonl")]
    out = subprocess.run([*plot, "--out", str(tmp_path / "curve.png")], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and (tmp_path / "curve.png").stat().st_size > 1000, out.stderr
    assert len([line for line in out.stdout.splitlines() if line.strip()[:1].isdigit()]) == 2  # two points


@pytest.mark.parametrize("engine", ["fsdp2", "deepspeed_zero2", "colossalai_zero2"])
def test_validation_under_a_sharded_engine_leaves_training_unchanged(shapes_dir, tmp_path, engine):
    """2 gloo ranks; the weights (or EMA) gathered for validation on rank 0: the same trajectory."""
    val = _i2v_stage(shapes_dir, tmp_path, "val", "curriculum.stages.i2v.validate_every=1", "eval.repeats=1")
    _torchrun("opensora_lite.cli.train", val, tmp_path, engine)
    plain = _i2v_stage(shapes_dir, tmp_path, "plain", "curriculum.stages.i2v.evaluate=false")
    _torchrun("opensora_lite.cli.train", plain, tmp_path, engine)
    _same_weights(tmp_path / "val" / "i2v", tmp_path / "plain" / "i2v")
    points = [r for r in _rows(tmp_path / "val") if "val/colour_acc" in r]
    assert [r["step"] for r in points] == [1, 2] and points[0]["val/ema"] is True


def test_v2v_tasks_train_the_condition_on_long_enough_clips(shapes_dir, tmp_path):
    """v2v_head / v2v_tail in the task mix: with 2 given latent frames of 5 the condition's projection
    learns; with 5 of 5 (too many) the clips fall back to t2v and cond_in's weight stays at zero."""
    finals = {}
    for k in (2, 5):
        overrides = [
            *mini_overrides(shapes_dir, tmp_path, name=f"v2v{k}"),
            "run.stage=i2v",
            "curriculum.stages.i2v.init=none",
            *(f"curriculum.stages.i2v.tasks.{t}=0" for t in ("t2v", "i2v_head", "i2v_tail", "i2v_loop")),
            "+curriculum.stages.i2v.tasks.v2v_head=1",
            "+curriculum.stages.i2v.tasks.v2v_tail=1",
            f"curriculum.stages.i2v.v2v_frames={k}",
            "curriculum.stages.i2v.evaluate=false",
        ]
        run(compose(overrides))
        finals[k] = load_weights(tmp_path / f"v2v{k}" / "i2v" / "final" / "model.safetensors")["cond_in.weight"]
    assert finals[2].abs().max() > 1e-4
    assert not finals[5].any()
