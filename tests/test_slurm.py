"""A real Slurm cluster on this machine (scripts/local_slurm.sh: munge, slurmctld, two slurmd as nodes n1
and n2): the mini curriculum submitted with slurm/multinode.sbatch over 2 nodes x 1 task, and a job that
is signalled as Slurm signals before a time limit (USR1), checkpoints, requeues itself and finishes with
the weights of an uninterrupted run. Skipped, with the reason, only where Slurm cannot run (not root,
no apt)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import pytest
import torch
from conftest import BIN, REPO, mini_overrides

from opensora_lite.train.state import load_weights


@pytest.fixture(scope="module")
def slurm():
    out = subprocess.run([str(REPO / "scripts" / "local_slurm.sh")], capture_output=True, text=True, timeout=300)
    if out.returncode == 3:
        pytest.skip(f"no local Slurm here: {out.stderr.strip()}")
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def _submit(tmp_path, overrides: list[str], name: str, template: str = "multinode.sbatch") -> str:
    cmd = [
        "sbatch",
        "--parsable",
        "--nodes=2",
        "--ntasks-per-node=1",
        "--gpus-per-node=0",
        "--cpus-per-task=1",
        f"--job-name={name}",
        f"--output={tmp_path}/slurm-%j.out",
        str(REPO / "slurm" / template),
        *overrides,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(OSL_VENV=str(BIN.parent), OMP_NUM_THREADS="1", OSL_NPROC_PER_NODE="1")
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(";")[0]


def _job(job: str) -> dict:
    text = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True).stdout
    return dict(part.split("=", 1) for part in text.split() if "=" in part)


def _wait(job: str, timeout: float) -> dict:
    """Poll until the job has ended for good (sbatch --wait notices slowly); its final record."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = _job(job)
        if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return info
        time.sleep(1)
    subprocess.run(["scancel", job])
    raise AssertionError(f"job {job} still {_job(job).get('JobState')} after {timeout} s")


def _log(tmp_path, job: str) -> str:
    return (tmp_path / f"slurm-{job}.out").read_text()


def test_mini_curriculum_as_a_stage_chain_over_two_nodes(slurm, shapes_dir, tmp_path):
    """osl-submit queues one job per stage, each after the previous one succeeded; each job runs over
    2 nodes x 1 process; the chain completes in order and every stage evaluated its final weights."""
    sbatch = ["--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1", f"--output={tmp_path}/slurm-%j.out"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(OSL_VENV=str(BIN.parent), OMP_NUM_THREADS="1")
    out = subprocess.run(
        [str(BIN / "osl-submit"), "--nodes", "2", *[f"--sbatch={o}" for o in sbatch],
         *mini_overrides(shapes_dir, tmp_path, name="chain")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    jobs = dict(line.split(": job ") for line in out.stdout.strip().splitlines())
    assert list(jobs) == ["image", "t2v", "i2v"]
    assert _job(jobs["t2v"])["Dependency"].startswith(f"afterok:{jobs['image']}")
    infos = {stage: _wait(job, 400) for stage, job in jobs.items()}
    for stage, info in infos.items():
        log = _log(tmp_path, jobs[stage])
        assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-3000:]
        assert "on n[1-2] (2 processes)" in log
        summary = json.loads((tmp_path / "chain" / stage / "final" / "summary.json").read_text())
        assert "colour_acc" in summary["metrics"]
    assert (
        infos["image"]["EndTime"] <= infos["t2v"]["StartTime"] and infos["t2v"]["EndTime"] <= infos["i2v"]["StartTime"]
    )
    assert "(2 processes), engine fsdp2" in (tmp_path / "chain" / "logs" / "train.log").read_text()


PREEMPTED_STAGE = [
    "run.stage=image",
    "curriculum.stages.image.steps=12",
    "curriculum.stages.image.log_every=1",
    "curriculum.stages.image.checkpoint_every=0",
    "curriculum.stages.image.evaluate=false",
]


@pytest.fixture(scope="module")
def uninterrupted(slurm, shapes_dir, tmp_path_factory):
    """The stage of the preemption tests, run through without a signal (2 nodes x 1 process, fsdp2)."""
    tmp = tmp_path_factory.mktemp("straight")
    job = _submit(tmp, [*mini_overrides(shapes_dir, tmp, name="straight"), *PREEMPTED_STAGE], "osl-straight")
    assert _wait(job, 400)["JobState"] == "COMPLETED", _log(tmp, job)[-3000:]
    return load_weights(tmp / "straight" / "image" / "final" / "model.safetensors")


@pytest.mark.parametrize("template", ["multinode.sbatch", "torchrun_multinode.sbatch"])
def test_usr1_checkpoints_requeues_and_resumes_to_the_same_weights(
    slurm, shapes_dir, tmp_path, uninterrupted, template
):
    """USR1, as `--signal=USR1@N` sends it before the time limit, to a job of either template (srun per
    process; torchrun per node): every process stops at the same step, checkpoints, the job requeues
    itself, restarts, resumes and ends on bitwise the weights of the uninterrupted job."""
    overrides = [*mini_overrides(shapes_dir, tmp_path, name="preempted"), *PREEMPTED_STAGE]
    job = _submit(tmp_path, overrides, "osl-preempt", template)
    metrics = tmp_path / "preempted" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and metrics.read_text().count('"loss"') >= 3):
        assert time.monotonic() < deadline and _job(job).get("JobState") in ("PENDING", "RUNNING"), _job(job)
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    info = _wait(job, 400)
    log = _log(tmp_path, job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-3000:]
    assert int(info["Restarts"]) == 1 and "restart 1 on" in log
    assert "preempted: image: stopped at step" in log and f"requeueing job {job}" in log
    assert "Traceback" not in log  # a preemption is routine: no process reports it as a crash
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    stopped = [r for r in rows if r.get("event") == "preempted"]
    resumed = [r for r in rows if r.get("event") == "resume"]
    assert len(stopped) == 1 and resumed and resumed[0]["from_step"] == stopped[0]["at_step"] > 0
    weights = load_weights(tmp_path / "preempted" / "image" / "final" / "model.safetensors")
    assert all(torch.equal(weights[k], uninterrupted[k]) for k in weights), "the requeued run diverged"


def _sweep_command(tmp_path, name: str, overrides: list[str]) -> list[str]:
    """`osl-train --multirun hydra/launcher=slurm ...` (configs/hydra/launcher/slurm.yaml), sized for here."""
    launcher = ["tasks_per_node=1", "gpus_per_node=0", "cpus_per_task=1", "timeout_min=10"]
    return [
        str(BIN / "osl-train"), "--multirun", "hydra/launcher=slurm", *(f"hydra.launcher.{o}" for o in launcher),
        *mini_overrides(tmp_path / "data", tmp_path, name=name), "run.stage=image",
        "curriculum.stages.image.evaluate=false", *overrides,
    ]  # fmt: skip


def _sweep_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {**env, "OMP_NUM_THREADS": "1"}


def _sweep(tmp_path, name: str, overrides: list[str]) -> subprocess.CompletedProcess:
    cmd = _sweep_command(tmp_path, name, overrides)
    return subprocess.run(cmd, cwd=tmp_path, env=_sweep_env(), capture_output=True, text=True, timeout=400)


def test_hydra_sweep_runs_one_slurm_job_per_point(slurm, shapes_dir, tmp_path):
    """A --multirun sweep through the Slurm launcher: one Slurm job per point, each over 2 nodes x 1 process
    (rendezvous found by the job itself), each in its own run directory; a failing point is reported in
    one line and fails the sweep."""
    (tmp_path / "data").symlink_to(shapes_dir)
    out = _sweep(tmp_path, "sweep", ["hydra.launcher.nodes=2", "parallel=ddp", "run.seed=0,1"])
    assert out.returncode == 0, out.stderr[-3000:]
    root = tmp_path / "sweep"
    jobs = sorted(p.name for p in (root / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name))
    assert len(jobs) == 2, jobs  # one Slurm array task per point, its logs in .submitit/<array>_<task>/
    finals = []
    for point in ("0_run.seed=0", "1_run.seed=1"):
        assert "2 processes" in (root / point / "logs" / "train.log").read_text()
        finals.append(load_weights(root / point / "image" / "final" / "model.safetensors"))
    assert not torch.equal(finals[0]["img_in.weight"], finals[1]["img_in.weight"])  # the swept seed took effect
    for job in jobs:  # the sweep returns on the jobs' results; Slurm may still be completing them
        info = _wait(job, 60)
        assert info["JobState"] == "COMPLETED" and info["NumNodes"] == "2", info

    bad = _sweep(tmp_path, "bad", ["curriculum.stages.image.keep_checkpoints=1,0"])
    assert bad.returncode == 1
    assert "error: curriculum.stages.image.keep_checkpoints: must be >= 1" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert (tmp_path / "bad" / "0_curriculum.stages.image.keep_checkpoints=1" / "image" / "final").is_dir()


def test_a_preempted_sweep_job_requeues_and_the_sweep_completes(slurm, shapes_dir, tmp_path):
    """Submitit asks Slurm for USR2 before a sweep job's time limit: the job checkpoints and requeues
    itself, the restarted job resumes, and the sweeping command collects its result and succeeds."""
    (tmp_path / "data").symlink_to(shapes_dir)
    overrides = ["curriculum.stages.image.steps=16", "curriculum.stages.image.log_every=1"]
    cmd = _sweep_command(tmp_path, "swept", overrides)
    sweep = subprocess.Popen(cmd, cwd=tmp_path, env=_sweep_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    metrics = tmp_path / "swept" / "0_job" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and metrics.read_text().count('"loss"') >= 3):
        assert time.monotonic() < deadline and sweep.poll() is None, sweep.communicate()[0][-3000:]
        time.sleep(0.5)
    (task,) = [p.name for p in (tmp_path / "swept" / ".submitit").iterdir() if p.name.isdigit()]  # one point: one job
    subprocess.run(["scancel", "--signal=USR2", task], check=True)
    output = sweep.communicate(timeout=300)[0].decode()
    assert sweep.returncode == 0, output[-3000:]
    assert int(_wait(task, 60)["Restarts"]) == 1
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    (stopped,) = [r for r in rows if r.get("event") == "preempted"]
    (resumed,) = [r for r in rows if r.get("event") == "resume"]
    assert stopped["signal"] == "SIGUSR2" and resumed["from_step"] == stopped["at_step"]
    assert (tmp_path / "swept" / "0_job" / "image" / "final" / "model.safetensors").is_file()
