"""A real Slurm cluster on this machine (scripts/local_slurm.sh: munge, slurmctld, two slurmd as nodes n1
and n2, a preemptible partition). Jobs are signalled as clusters and their users signal them: USR1 to
every process (the time limit's --signal), USR1 to the batch shell alone or to the whole job,
`scontrol requeue`, and preemption by a job of a higher partition (SIGTERM, grace time). Each
checkpoints, is requeued, resumes and ends on the weights of an uninterrupted run; an osl-submit chain
completes through a signalled stage and is cancelled after a failed one. Skipped, with the reason, only
where Slurm cannot run (not root, no apt)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import BIN, REPO, mini_overrides

from opensora_lite.checkpoint.files import load_weights


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


def _submit_chain(tmp_path, overrides: list[str]) -> dict[str, str]:
    """`osl-submit --nodes 2 ...` sized for here; stage -> job id."""
    sbatch = ["--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1", f"--output={tmp_path}/slurm-%j.out"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(OSL_VENV=str(BIN.parent), OMP_NUM_THREADS="1")
    out = subprocess.run(
        [str(BIN / "osl-submit"), "--nodes", "2", *[f"--sbatch={o}" for o in sbatch], *overrides],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return dict(line.split(": job ") for line in out.stdout.strip().splitlines())


def _wait_for_losses(metrics, job: str, count: int, stage: str | None = None) -> None:
    """Until the job has logged `count` losses (of `stage`), while it is pending or running."""
    deadline = time.monotonic() + 300
    while True:
        rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
        if sum(1 for r in rows if "loss" in r and stage in (None, r.get("stage"))) >= count:
            return
        assert time.monotonic() < deadline and _job(job).get("JobState") in ("PENDING", "RUNNING"), _job(job)
        time.sleep(0.5)


def test_a_stage_chain_over_two_nodes_survives_usr1_to_the_whole_job(slurm, shapes_dir, tmp_path):
    """osl-submit queues one job per stage, each after the previous one succeeded; each job runs over
    2 nodes x 1 process. The t2v job gets `scancel --signal=USR1 --full` mid-stage (the batch shell and
    every process): it checkpoints, requeues, resumes, and the chain completes in order with every stage
    evaluated."""
    overrides = [
        *mini_overrides(shapes_dir, tmp_path, name="chain"),
        "curriculum.stages.t2v.steps=12",
        "curriculum.stages.t2v.checkpoint_every=0",
        "data.num_workers=1",
    ]
    jobs = _submit_chain(tmp_path, overrides)
    assert list(jobs) == ["image", "t2v", "i2v"]
    assert _job(jobs["t2v"])["Dependency"].startswith(f"afterok:{jobs['image']}")
    _wait_for_losses(tmp_path / "chain" / "metrics.jsonl", jobs["t2v"], 3, stage="t2v")
    subprocess.run(["scancel", "--signal=USR1", "--full", jobs["t2v"]], check=True)
    infos = {stage: _wait(job, 400) for stage, job in jobs.items()}
    for stage, info in infos.items():
        log = _log(tmp_path, jobs[stage])
        assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-3000:]
        assert "on n[1-2] (2 processes)" in log and "Traceback" not in log, log[-3000:]
        summary = json.loads((tmp_path / "chain" / stage / "final" / "summary.json").read_text())
        assert "colour_acc" in summary["metrics"]
    assert [int(infos[s]["Restarts"]) for s in jobs] == [0, 1, 0]
    t2v_log = _log(tmp_path, jobs["t2v"])
    assert "batch shell got SIGUSR1" in t2v_log and f"requeueing job {jobs['t2v']}" in t2v_log
    assert (
        infos["image"]["EndTime"] <= infos["t2v"]["StartTime"] and infos["t2v"]["EndTime"] <= infos["i2v"]["StartTime"]
    )
    rows = [json.loads(line) for line in (tmp_path / "chain" / "metrics.jsonl").read_text().splitlines()]
    (stopped,) = [r for r in rows if r.get("event") == "preempted"]
    (resumed,) = [r for r in rows if r.get("event") == "resume"]
    assert stopped["stage"] == resumed["stage"] == "t2v" and resumed["from_step"] == stopped["at_step"] > 0
    assert "(2 processes), engine fsdp2" in (tmp_path / "chain" / "logs" / "train.log").read_text()


def test_a_failed_stage_cancels_the_rest_of_its_chain(slurm, shapes_dir, tmp_path):
    """The first stage fails at start-up (its shards are missing, which only the job can see): Slurm
    cancels the later stages (DependencyNeverSatisfied) instead of keeping them queued forever."""
    overrides = [*mini_overrides(shapes_dir, tmp_path, name="broken"), f"data.shards={tmp_path}/missing/*.tar"]
    jobs = _submit_chain(tmp_path, overrides)
    first = _wait(jobs["image"], 120)
    assert first["JobState"] == "FAILED", first
    assert "error: " in _log(tmp_path, jobs["image"])
    for stage in ("t2v", "i2v"):
        info = _wait(jobs[stage], 60)
        assert info["JobState"] == "CANCELLED" and info["Reason"] == "DependencyNeverSatisfied", (stage, info)


PREEMPTED_STAGE = [
    "run.stage=image",
    "data.num_workers=1",  # as real jobs have: signals reach the loader worker too
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


def _preempted_job(shapes_dir, tmp_path, template: str = "multinode.sbatch") -> tuple[str, Path]:
    """A job of the preemption stage, running and past its third step; (job id, its metrics file)."""
    overrides = [*mini_overrides(shapes_dir, tmp_path, name="preempted"), *PREEMPTED_STAGE]
    job = _submit(tmp_path, overrides, "osl-preempt", template)
    metrics = tmp_path / "preempted" / "metrics.jsonl"
    _wait_for_losses(metrics, job, 3)
    return job, metrics


def _resumed_to_the_same_weights(tmp_path, job: str, metrics, uninterrupted, requeued_by: str) -> dict:
    """The job completed after one requeue, resumed where it stopped, and ends on the uninterrupted
    weights; its log says who requeued it and shows no traceback. Returns its final record."""
    info = _wait(job, 400)
    log = _log(tmp_path, job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-3000:]
    assert int(info["Restarts"]) == 1 and "restart 1 on" in log
    assert "preempted: image: stopped at step" in log and requeued_by in log, log[-3000:]
    assert "Traceback" not in log  # a preemption is routine: no process reports it as a crash
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    stopped = [r for r in rows if r.get("event") == "preempted"]
    resumed = [r for r in rows if r.get("event") == "resume"]
    assert len(stopped) == 1 and resumed and resumed[0]["from_step"] == stopped[0]["at_step"] > 0
    weights = load_weights(tmp_path / "preempted" / "image" / "final" / "model.safetensors")
    assert all(torch.equal(weights[k], uninterrupted[k]) for k in weights), "the requeued run diverged"
    return info


@pytest.mark.parametrize(
    "template, signal_with",
    [
        ("multinode.sbatch", ["scancel", "--signal=USR1"]),  # what --signal=USR1@N sends: every process
        ("torchrun_multinode.sbatch", ["scancel", "--signal=USR1", "--batch"]),  # the batch shell alone
        ("multinode.sbatch", ["scontrol", "requeue"]),  # Slurm requeues: TERM to everything, then KILL
    ],
    ids=["usr1-steps", "usr1-batch-torchrun", "scontrol-requeue"],
)
def test_a_signalled_job_checkpoints_requeues_and_resumes_to_the_same_weights(
    slurm, shapes_dir, tmp_path, uninterrupted, template, signal_with
):
    """A job of either template (srun per process; torchrun per node) signalled mid-stage as Slurm and
    its users signal jobs: every process stops at the same step and checkpoints, the job is requeued
    (by rank 0, or by Slurm itself for `scontrol requeue`), restarts, resumes and ends on bitwise the
    weights of the uninterrupted job."""
    job, metrics = _preempted_job(shapes_dir, tmp_path, template)
    subprocess.run([*signal_with, job], check=True)
    by_slurm = signal_with[0] == "scontrol"
    _resumed_to_the_same_weights(
        tmp_path,
        job,
        metrics,
        uninterrupted,
        f"job {job} is already requeued by Slurm" if by_slurm else f"requeueing job {job}",
    )
    if "--batch" in signal_with:
        assert "batch shell got SIGUSR1: passing it to the job step" in _log(tmp_path, job)


def test_scheduler_preemption_checkpoints_within_the_grace_time_and_requeues(
    slurm, shapes_dir, tmp_path, uninterrupted
):
    """A job of the `urgent` partition needs the nodes of a running `debug` job (PreemptMode=REQUEUE,
    GraceTime=60 in scripts/local_slurm.sh): Slurm sends SIGTERM to the preempted job's processes; they
    checkpoint well inside the grace time, the job is requeued, the urgent job runs, and the preempted
    job resumes and completes with the uninterrupted weights."""
    job, metrics = _preempted_job(shapes_dir, tmp_path)
    urgent = subprocess.run(
        ["sbatch", "--parsable", "--partition=urgent", "--nodes=2", "--exclusive", f"--output={tmp_path}/urgent-%j.out",
         "--wrap", "echo urgent ran"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    info = _resumed_to_the_same_weights(tmp_path, job, metrics, uninterrupted, f"requeueing job {job}")
    assert _wait(urgent, 60)["JobState"] == "COMPLETED"
    assert _job(urgent)["StartTime"] <= info["StartTime"]  # the urgent job ran first, then the requeued one
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    (stopped,) = [r for r in rows if r.get("event") == "preempted"]
    assert stopped["signal"] == "SIGTERM"


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
