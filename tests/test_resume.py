"""Interrupted jobs, as a user's job gets interrupted: `osl-train` in its own process, killed with SIGKILL at
a random step or in the middle of writing a checkpoint, or stopped with SIGTERM (a preemption outside
Slurm). Rerunning the same command must resume from the newest complete checkpoint and log bitwise the
loss sequence of an uninterrupted run (one process, CPU), and end on the same weights.

The step a kill lands on is random; the seed is in every failure message (OSL_TEST_SEED=... repeats it).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import BIN, REPO, mini_overrides
from wandb_records import read_run

from opensora_lite.checkpoint.files import load_weights
from opensora_lite.checkpoint.stage import StageCheckpoints as StageDir

STEPS = 12
SEED = int(os.environ.get("OSL_TEST_SEED", time.time_ns() % 100_000))


def _overrides(data: Path, root: Path, **stage) -> list[str]:
    settings = {"steps": STEPS, "log_every": 1, "checkpoint_every": 1, "keep_checkpoints": 2, **stage}
    return [
        *mini_overrides(data, root, name="job"),
        "run.stage=t2v",
        "curriculum.stages.t2v.init=none",
        "curriculum.stages.t2v.evaluate=false",
        *(f"curriculum.stages.t2v.{k}={v}" for k, v in settings.items()),
    ]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}  # not a Slurm job here
    return {**env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}


def _start(overrides: list[str], log: Path) -> subprocess.Popen:
    """osl-train in a process group of its own (with its loader workers), as a job step or a pod is."""
    with open(log, "ab") as fh:
        cmd = [str(BIN / "osl-train"), *overrides]
        return subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=fh, stderr=fh, start_new_session=True)


def _finish(overrides: list[str], log: Path) -> None:
    proc = _start(overrides, log)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _losses(records: list[dict]) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120, poll: float = 0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        assert proc.poll() is None, f"the job ended (status {proc.returncode}) before it could be interrupted"
        time.sleep(poll)
    proc.kill()
    raise AssertionError("timed out waiting for the job")


def _after_resume(records: list[dict]) -> list[dict]:
    """The records the rerun wrote: those after its `resume` event."""
    marks = [i for i, r in enumerate(records) if r.get("event") == "resume"]
    assert len(marks) == 1, f"expected one resume, found {len(marks)}"
    return records[marks[0] + 1 :]


@pytest.fixture(scope="module")
def reference(shapes_dir, tmp_path_factory):
    """The uninterrupted job: its per-step losses and final weights."""
    root = tmp_path_factory.mktemp("reference")
    _finish(_overrides(shapes_dir, root), root / "job.log")
    losses = _losses(_records(root / "job"))
    assert sorted(losses) == list(range(1, STEPS + 1))
    return losses, load_weights(root / "job" / "t2v" / "final" / "model.safetensors")


def _same_end(reference, run_dir: Path, context: str) -> None:
    """Same final weights, and metrics.jsonl reads as one run: each step once, in order, with the
    uninterrupted job's loss (the rerun dropped what the first job logged after its checkpoint)."""
    losses, weights = reference
    final = load_weights(run_dir / "t2v" / "final" / "model.safetensors")
    assert all(torch.equal(final[k], weights[k]) for k in weights), f"final weights differ ({context})"
    logged = [(r["step"], r["loss"]) for r in _records(run_dir) if "loss" in r]
    assert [step for step, _ in logged] == list(range(1, STEPS + 1)), f"steps logged: {logged} ({context})"
    for step, loss in logged:
        assert loss == losses[step], f"step {step} loss differs ({context})"


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_sigkill_at_a_random_step_resumes_to_the_same_loss_sequence(shapes_dir, tmp_path, reference):
    """Killed between checkpoints (every 3 steps): the rerun repeats the steps after the newest one. Both
    metrics.jsonl and the W&B run read as one run: the steps the killed job logged past its checkpoint
    are dropped (W&B rewinds the same run to the checkpoint's step) and logged once, by the rerun."""
    kill_after = random.Random(SEED).randint(4, STEPS - 3)
    context = f"seed {SEED}, killed after step {kill_after} was logged"
    overrides = [
        *_overrides(shapes_dir, tmp_path, checkpoint_every=3, keep_checkpoints=1),
        "logger=wandb",
        "logger.wandb.mode=offline",
    ]
    run_dir, log = tmp_path / "job", tmp_path / "job.log"
    proc = _start(overrides, log)
    _wait_for(lambda: len(_losses(_records(run_dir))) >= kill_after, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    newest = StageDir(run_dir / "t2v").latest_checkpoint()
    assert newest is not None, context
    from_step = int(newest.name.split("_")[1])
    logged = max(_losses(_records(run_dir)))
    _finish(overrides, log)
    rerun = _after_resume(_records(run_dir))
    assert min(_losses(rerun)) == from_step + 1, f"the rerun did not start after step {from_step} ({context})"
    _same_end(reference, run_dir, f"{context}, logged up to {logged}, resumed from {from_step}")
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2 and files[0].name == files[1].name, files  # the same W&B run, twice
    second = read_run(files[1])  # the killed job's file may end before its first row: SIGKILL stops its writer
    offset = {r["global_step"] - r["step"] for r in rerun if "loss" in r}  # the stages before t2v
    assert len(offset) == 1, offset
    offset = offset.pop()
    # W&B rewinds when the killed job had logged past its checkpoint; killed between the checkpoint and the
    # next row, there is nothing to drop and the run resumes as it was (no branch point)
    rewound = offset + from_step if logged > from_step else None
    assert second["rewound_to"] == rewound, f"{context}, logged up to {logged}, resumed from {from_step}"
    assert [h["_step"] - offset for h in second["history"] if "loss" in h] == list(range(from_step + 1, STEPS + 1))


def test_ctrl_c_checkpoints_and_a_refused_restart_leaves_the_run_as_it_was(shapes_dir, tmp_path, reference):
    """Ctrl-C (SIGINT to the job's process group, as a terminal sends it): the step in hand finishes and is
    checkpointed (periodic checkpoints are off), the job exits 130 with one line naming the command that
    resumes, no traceback. A restart with a changed model is refused with one line and leaves every file
    of the run byte-identical (config.yaml, checkpoints, metrics); the real rerun continues the loss
    sequence bitwise."""
    signal_after = random.Random(SEED).randint(2, STEPS - 3)
    overrides = _overrides(shapes_dir, tmp_path, checkpoint_every=0)
    run_dir, log = tmp_path / "job", tmp_path / "job.log"
    proc = _start(overrides, log)
    _wait_for(lambda: len(_losses(_records(run_dir))) >= signal_after, proc)
    os.killpg(proc.pid, signal.SIGINT)  # the trainer and its loader workers alike
    assert proc.wait(timeout=60) == 130, log.read_text()[-3000:]
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    (said,) = [line for line in text.splitlines() if line.startswith("interrupted:")]
    assert "checkpoint written" in said and "osl-train" in said and "run.stage=t2v" in said, said
    (event,) = [r for r in _records(run_dir) if r.get("event") == "preempted"]
    at = event["at_step"]
    assert at >= signal_after and event["signal"] == "SIGINT"
    assert [p.name for p in StageDir(run_dir / "t2v").list_checkpoints()] == [f"step_{at:08d}"]

    before = _tree(run_dir)
    bad = subprocess.run(
        [str(BIN / "osl-train"), *overrides, "model.hidden_size=256", "model.num_heads=8"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2, bad.stderr[-3000:]
    assert bad.stderr.strip().startswith("error:") and "do not fit the model" in bad.stderr, bad.stderr[-3000:]
    assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stdout + bad.stderr
    assert _tree(run_dir) == before, "the refused restart changed the run directory"

    _finish(overrides, log)
    assert min(_losses(_after_resume(_records(run_dir)))) == at + 1
    _same_end(reference, run_dir, f"seed {SEED}, SIGINT after step {signal_after}, stopped at {at}")


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_sigkill_while_a_checkpoint_is_written_leaves_the_previous_one_usable(
    shapes_dir, tmp_path, reference, asynchronous
):
    """Kill the moment a checkpoint's temporary folder appears (plus a random few ms, so the kill lands
    at different points of the write); retried until a kill landed before the folder was renamed.
    Asynchronous: the write runs in a background thread while training goes on, and is published by
    rank 0 when complete; the kill must leave the same picture."""
    rng = random.Random(SEED)
    for attempt in range(8):
        run_dir, log = tmp_path / f"job{attempt}", tmp_path / f"job{attempt}.log"
        overrides = [
            *_overrides(shapes_dir, tmp_path, async_checkpoint=asynchronous),
            f"run.name=job{attempt}",
        ]
        proc = _start(overrides, log)
        folder = run_dir / "t2v" / "checkpoints"
        step = rng.randint(2, STEPS - 2)  # a write that has a complete checkpoint before it
        tmp = folder / f".tmp-step_{step:08d}"
        published = folder / f"step_{step:08d}"  # the write was missed by polling: kill and try again
        _wait_for(lambda tmp=tmp, done=published: tmp.exists() or done.exists(), proc, poll=0.0002)
        time.sleep(rng.uniform(0, 0.02))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if tmp.exists():
            break
    else:
        pytest.fail(f"no kill landed inside a checkpoint write in 8 attempts (seed {SEED})")
    written = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*"))
    context = f"seed {SEED}, killed while writing step {step}; it held {written}"
    stage = StageDir(run_dir / "t2v")
    newest = stage.latest_checkpoint()
    assert newest is not None and newest.name == f"step_{step - 1:08d}", context
    ckpt = stage.read_checkpoint(newest)  # complete: weights, optimizer, trainer state
    assert ckpt["trainer_state"]["step"] == step - 1 and (newest / "optim_dcp" / ".metadata").is_file(), context
    # asynchronous checkpoints of the single engine are DCP folders (model_dcp/), synchronous ones one file
    assert (newest / "model_dcp" / ".metadata").is_file() == asynchronous, context
    blocked = [r for r in _records(run_dir) if "checkpoint_block_s" in r]
    assert blocked and all(r["checkpoint_block_s"] >= 0 for r in blocked), context
    assert any("checkpoint_write_s" in r for r in _records(run_dir)) == asynchronous, context
    _finish(overrides, log)
    assert not tmp.exists(), "the half-written folder was left behind"
    assert "removed incomplete checkpoint folders" in log.read_text()
    assert min(_losses(_after_resume(_records(run_dir)))) == step, context
    _same_end(reference, run_dir, context)


def test_sigterm_to_the_process_group_checkpoints_exits_3_and_resumes_into_the_same_wandb_run(
    shapes_dir, tmp_path, reference
):
    """SIGTERM to the job's whole process group, as Slurm delivers it to a step on preemption, scancel or a
    time limit (and Kubernetes to a pod): the loader worker leaves it to the trainer, which finishes its
    step, writes a checkpoint of it even with periodic checkpoints off, and exits with status 3; the rerun
    resumes there and logs into the same W&B run. (One loader worker deals the shards as none does.)"""
    signal_after = random.Random(SEED).randint(2, STEPS - 3)
    overrides = [
        *_overrides(shapes_dir, tmp_path, checkpoint_every=0),
        "data.num_workers=1",
        "logger=wandb",
        "logger.wandb.mode=offline",
    ]
    run_dir, log = tmp_path / "job", tmp_path / "job.log"
    proc = _start(overrides, log)
    _wait_for(lambda: len(_losses(_records(run_dir))) >= signal_after, proc)
    os.killpg(proc.pid, signal.SIGTERM)  # the trainer and its loader worker alike
    assert proc.wait(timeout=60) == 3, log.read_text()[-3000:]
    text = log.read_text()
    assert "preempted: t2v: stopped at step" in text and "not a Slurm job: not requeued" in text
    assert "Traceback" not in text, text[-3000:]
    (event,) = [r for r in _records(run_dir) if r.get("event") == "preempted"]
    at = event["at_step"]
    assert at >= signal_after and event["signal"] == "SIGTERM"
    assert [p.name for p in StageDir(run_dir / "t2v").list_checkpoints()] == [f"step_{at:08d}"]
    _finish(overrides, log)
    assert min(_losses(_after_resume(_records(run_dir)))) == at + 1
    _same_end(reference, run_dir, f"seed {SEED}, SIGTERM after step {signal_after}, stopped at {at}")
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert [f.name for f in files] == [f"run-{run_id}.wandb"] * 2  # the rerun resumed the same W&B run
    first, second = read_run(files[0]), read_run(files[1])
    assert "event/preempted" in {k for h in first["history"] for k in h}
    assert "event/resume" in {k for h in second["history"] for k in h}
    offset = [h["_step"] for h in first["history"] if "loss" in h][0] - 1  # the stages before t2v
    resumed = [h["_step"] - offset for h in second["history"] if "loss" in h]
    assert resumed == list(range(at + 1, STEPS + 1))  # W&B's step axis continues where the job stopped
