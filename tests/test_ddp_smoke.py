"""Every engine under torchrun with 2 gloo processes running the mini curriculum; an fsdp2 stage started
by slurm/stage_1node.sbatch resumes from its sharded checkpoint to the same weights; sequence-parallel
stages match one process. (Loss parity of each engine with a single-process reference: test_engines.py.)"""

import json
import os
import shutil
import subprocess

import pytest
import torch
from conftest import BIN, REPO, TORCHRUN, mini_overrides, on_a_free_port
from wandb_records import read_run

from opensora_lite.checkpoint.files import load_weights


def _launch(overrides, cwd):
    cmd = ["bash", str(REPO / "slurm" / "stage_1node.sbatch"), *overrides]
    env = dict(os.environ, SLURM_SUBMIT_DIR=str(REPO), SLURM_GPUS_ON_NODE="2")
    env["OSL_VENV"] = str(BIN.parent)  # the environment running these tests

    def launch(port: int) -> subprocess.CompletedProcess:  # the script takes its port from MASTER_PORT
        run = dict(env, MASTER_PORT=str(port))
        return subprocess.run(cmd, cwd=cwd, env=run, capture_output=True, text=True, timeout=300)

    out = on_a_free_port(launch)
    assert out.returncode == 0, out.stderr[-3000:]


ENGINES = {  # engine -> (extra overrides, optimizer-state folder in its checkpoints)
    "ddp": ([], "optim_dcp"),
    "fsdp2": ([], "optim_dcp"),
    "deepspeed_zero2": ([], "optim_deepspeed"),
    "deepspeed_zero3": ([], "optim_deepspeed"),
    "colossalai_zero2": ([], "optim_colossalai"),
    "colossalai_hybrid_sp": (["parallel.sp_size=2"], "optim_colossalai"),
}


def _torchrun(module: str, overrides: list[str], cwd, engine: str) -> str:
    """`torchrun --nproc-per-node=2 -m <module> parallel=<engine> ...`, the command docs/engines/*.md give;
    returns what it printed (stdout, then stderr)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if engine.startswith("colossalai"):  # test-only: ColossalAI's ZeRO on a CPU (see the shim's docstring)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO / "tests" / "colossalai_cpu"), env.get("PYTHONPATH")])
        )
    cmd = [*TORCHRUN, "--nproc-per-node=2", "-m", module]
    out = subprocess.run(
        [*cmd, f"parallel={engine}", *overrides], cwd=cwd, env=env, capture_output=True, text=True, timeout=420
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


@pytest.mark.parametrize("engine", list(ENGINES))
def test_mini_curriculum_under_torchrun(shapes_dir, tmp_path, engine):
    """The (mini) tiny curriculum, all its stages, with 2 processes on each engine: every stage trains,
    checkpoints with the engine's optimizer state, evaluates on rank 0 and hands its weights on."""
    extra, optim = ENGINES[engine]
    if engine == "ddp":  # W&B from rank 0 alone
        extra = [*extra, "logger=wandb", "logger.wandb.mode=offline"]
    printed = _torchrun(
        "opensora_lite.cli.curriculum", [*mini_overrides(shapes_dir, tmp_path, name=engine), *extra], tmp_path, engine
    )
    run_dir = tmp_path / engine
    assert "run directory" in printed
    assert "returned a view tensor" not in printed  # FSDP2's warning about the model's output (a copy now)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for stage, steps in (("image", 4), ("t2v", 3), ("i2v", 2)):
        summary = json.loads((run_dir / stage / "final" / "summary.json").read_text())
        assert summary["steps"] == steps and torch.isfinite(torch.tensor(summary["final_loss"]))
        assert "colour_acc" in summary["metrics"]  # sampled from the gathered weights on rank 0
        assert any(r.get("event") == "init" and r["stage"] == stage for r in rows) or stage == "image"
    logged = [r for r in rows if r.get("stage") == "t2v" and "loss" in r and "event" not in r]
    assert [r["step"] for r in logged] == [1, 2, 3]  # rank 0 alone writes metrics
    if engine == "ddp":
        (run_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")  # one W&B run, not one per rank
        history = {h["_step"]: h["loss"] for h in read_run(run_file)["history"] if "loss" in h}
        assert history == {r["global_step"]: r["loss"] for r in rows if "loss" in r and "event" not in r}
    ckpt = run_dir / "image" / "checkpoints" / "step_00000002"
    assert (ckpt / optim).is_dir()
    assert "2 processes" in (run_dir / "logs" / "train.log").read_text()
    weights = load_weights(run_dir / "i2v" / "final" / "model.safetensors")
    assert "cond_in.weight" in weights and all(torch.isfinite(v).all() for v in weights.values())


def test_zero3_meta_init_trains_the_mini_curriculum(shapes_dir, tmp_path):
    """deepspeed_zero3 with parallel.meta_init: each stage's model built partitioned, filled from the seed
    (image), the previous stage's file (t2v) or that file plus a replayed cond_in (i2v), and trained."""
    overrides = [*mini_overrides(shapes_dir, tmp_path, name="zero3_meta"), "parallel.meta_init=true"]
    _torchrun("opensora_lite.cli.curriculum", overrides, tmp_path, "deepspeed_zero3")
    run_dir = tmp_path / "zero3_meta"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    inits = {r["stage"]: r["missing"] for r in rows if r.get("event") == "init"}
    assert inits["t2v"] == [] and inits["i2v"] == ["cond_in.bias", "cond_in.weight"]
    assert "(bfl, one tensor at a time)" in (run_dir / "logs" / "train.log").read_text()  # the partitioned path
    for stage, steps in (("image", 4), ("t2v", 3), ("i2v", 2)):
        summary = json.loads((run_dir / stage / "final" / "summary.json").read_text())
        assert summary["steps"] == steps and torch.isfinite(torch.tensor(summary["final_loss"]))
    weights = load_weights(run_dir / "i2v" / "final" / "model.safetensors")
    assert "cond_in.weight" in weights and all(torch.isfinite(v).all() for v in weights.values())


def test_fsdp2_stage_resumes_to_the_same_weights(shapes_dir, tmp_path):
    """slurm/stage_1node.sbatch (run by bash as a Slurm node would) trains a stage with fsdp2 and
    sharded checkpoints; interrupted after the step-2 checkpoint, the resumed run reaches bitwise the
    same final weights."""
    engine = "fsdp2"
    overrides = [
        *mini_overrides(shapes_dir, tmp_path, name=engine),
        f"parallel={engine}",
        "run.stage=image",
        "curriculum.stages.image.evaluate=false",
    ]
    _launch(overrides, tmp_path)
    run_dir = tmp_path / engine
    final = run_dir / "image" / "final"
    ckpt = run_dir / "image" / "checkpoints" / "step_00000002"
    assert (ckpt / "model_dcp" / ".metadata").is_file() and not (ckpt / "model.safetensors").exists()
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


@pytest.mark.parametrize("how", ["killed", "hung"])
def test_a_lost_rank_makes_the_other_exit_in_bounded_time(shapes_dir, tmp_path, how):
    """Two processes started as srun starts them (RANK/WORLD_SIZE, no torchrun agent to clean up): rank 1
    is killed (SIGKILL) or stopped (SIGSTOP, a hang) mid-training; rank 0 exits with one error line
    within parallel.timeout_s plus a margin, never waits forever."""
    import signal
    import time

    timeout_s = 12
    overrides = [
        *mini_overrides(shapes_dir, tmp_path, name=how),
        "parallel=ddp",
        f"parallel.timeout_s={timeout_s}",
        "run.stage=image",
        "curriculum.stages.image.steps=100000",
        "curriculum.stages.image.checkpoint_every=0",
        "curriculum.stages.image.log_every=1",
    ]
    metrics = tmp_path / how / "metrics.jsonl"

    def start(port: int) -> list[subprocess.Popen]:
        """Both ranks, returned once training is under way; an error (with rank 0's output) otherwise."""
        env = dict(os.environ, WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        procs = [
            subprocess.Popen(
                [str(BIN / "osl-train"), *overrides],
                cwd=tmp_path,
                env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                stdout=subprocess.PIPE if r == 0 else subprocess.DEVNULL,
                stderr=subprocess.PIPE if r == 0 else subprocess.DEVNULL,
                text=True,
            )
            for r in range(2)
        ]
        deadline = time.monotonic() + 120
        while not (metrics.is_file() and '"loss"' in metrics.read_text()):
            if procs[0].poll() is not None or time.monotonic() > deadline:
                for p in procs:
                    p.kill()
                    p.wait()
                raise RuntimeError(f"training did not start: {procs[0].stderr.read()[-2000:]}")
            time.sleep(0.5)
        return procs

    procs = on_a_free_port(start)
    try:
        procs[1].send_signal(signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        lost = time.monotonic()
        _, err = procs[0].communicate(timeout=timeout_s + 60)
        waited = time.monotonic() - lost
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    assert procs[0].returncode == 1
    assert waited < timeout_s + 30
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "rank 0 of 2: a collective failed" in lines[0], err[-2000:]
    assert "Traceback" not in err


def test_fsdp2_meta_init_and_async_checkpoints_end_on_the_same_weights(shapes_dir, tmp_path):
    """parallel.meta_init (each rank fills its shards: from scratch, then from the previous stage's file)
    and stage.async_checkpoint (written beside training) change nothing the run computes: the stages end
    bitwise on the weights of the plain fsdp2 run."""
    finals = []
    for name, extra in (("plain", []), ("meta", ["parallel.meta_init=true"])):
        stages = ("image", "t2v")
        extra = [*extra, *(f"curriculum.stages.{s}.async_checkpoint={name == 'meta'}" for s in stages)]
        overrides = [*mini_overrides(shapes_dir, tmp_path, name=name), "~curriculum.stages.i2v", *extra]
        overrides += ["curriculum.stages.t2v.checkpoint_every=1", "curriculum.stages.image.evaluate=false"]
        printed = _torchrun("opensora_lite.cli.curriculum", overrides, tmp_path, "fsdp2")
        assert ("rank-local slices" in printed) == (name == "meta"), printed[-3000:]
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        assert any("checkpoint_write_s" in r for r in rows) == (name == "meta")
        finals.append([load_weights(tmp_path / name / s / "final" / "model.safetensors") for s in stages])
    for stage, plain, meta in zip(("image", "t2v"), *finals):
        assert plain.keys() == meta.keys() and all(torch.equal(plain[k], meta[k]) for k in plain), stage
