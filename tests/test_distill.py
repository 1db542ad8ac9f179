"""The distill stage (stage.kind=distill, docs/distillation.md), run for real on the mini curriculum's I2V
model as the teacher: DMD2 trains a 4-step student beside a critic; the checkpoint holds the critic and its
optimizer; a resume from the mid-stage checkpoint continues bitwise; the student's evaluation and osl-sample
on its weights use its own schedule (4 steps, one forward each), recorded in samples.json."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import compose, typed
from safetensors.torch import load_file

from opensora_lite.checkpoint.files import dcp_shapes
from opensora_lite.checkpoint.state import read_trainer_state
from opensora_lite.errors import ConfigError


def _overrides(data, root, teacher) -> list[str]:
    """experiment=tiny_distill cut to seconds: 4 student steps of batch 2 at 24px (a checkpoint at step 2), one
    critic update each; the evaluation reads 8 T2V and 2 I2V clips."""
    s = "curriculum.stages.distill"
    return ["experiment=tiny_distill", f"data.shards={data}", "data.aspect_ratios=[0.75,1.0,1.3333]",
            "data.num_workers=0", f"run.root={root}", "run.name=job", "logger.progress_bar=false",
            f"{s}.init={teacher}", f"{s}.steps=4", f"{s}.checkpoint_every=2", f"{s}.log_every=1",
            f"{s}.buckets={{24px:{{5:[1.0,2]}}}}", f"{s}.distill.critic_steps=1",
            "eval.repeats=1", "eval.colours=[red,blue]", "eval.i2v_clips=2",
            "sample.num_steps=2", "sample.batch_size=8", "run.peak_tflops=0.002"]  # fmt: skip


def _losses(run_dir) -> list[tuple[int, float, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["critic_loss"]) for r in rows if r.get("stage") == "distill" and "loss" in r]


@pytest.fixture(scope="module")
def distilled(mini_run, shapes_dir, tmp_path_factory):
    from opensora_lite.cli.curriculum import run

    teacher = mini_run[0] / "i2v"
    root = tmp_path_factory.mktemp("distill")
    (result,) = run(compose(_overrides(shapes_dir, root, teacher)))
    return root / "job", result, teacher


def test_a_distill_stage_trains_a_student_beside_a_critic_and_resumes_bitwise(distilled, shapes_dir, tmp_path):
    from opensora_lite.cli.curriculum import run

    run_dir, result, teacher = distilled
    losses = _losses(run_dir)
    assert [s for s, *_ in losses] == [1, 2, 3, 4] and all(torch.isfinite(torch.tensor(r[1:])).all() for r in losses)
    # the student starts as the teacher and moves; the teacher's file is untouched
    student = load_file(run_dir / "distill" / "final" / "model.safetensors")
    original = load_file(teacher / "final" / "model.safetensors")
    assert set(student) == set(original) and any(not torch.equal(student[k], original[k]) for k in student)
    # the mid-stage checkpoint holds the critic (the teacher's architecture) and its Adam state
    (ckpt,) = [p for p in (run_dir / "distill" / "checkpoints").glob("step_*") if int(p.name[5:]) == 2]
    state = read_trainer_state(ckpt)
    assert state["step"] == 2
    stored = dcp_shapes(ckpt / "critic_dcp")
    critic = {k[len("model.") :]: v for k, v in stored.items() if k.startswith("model.")}
    assert len(critic) == len(original) and all(critic[k] == tuple(original[k].shape) for k in original)
    for moment in ("exp_avg", "exp_avg_sq"):
        assert {k for k in stored if k.startswith("optim.state.") and k.endswith(moment)} == {
            f"optim.state.{k}.{moment}" for k in critic
        }

    # interrupted after its step-2 checkpoint: the resumed run gives the same losses and weights, bitwise
    copy = tmp_path / "job"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "distill" / "final")
    for later in (copy / "distill" / "checkpoints").glob("step_*"):
        if int(later.name[5:]) != 2:
            shutil.rmtree(later)
    (resumed,) = run(compose([*_overrides(shapes_dir, tmp_path, teacher), "curriculum.stages.distill.evaluate=false"]))
    assert resumed.resumed_from == 2
    assert _losses(copy)[-2:] == losses[-2:]
    again = load_file(copy / "distill" / "final" / "model.safetensors")
    assert all(torch.equal(again[k], student[k]) for k in student), "the resumed student diverged"
    assert result.metrics and "direction_acc" in result.metrics  # the student's evaluation read the probes


def test_under_fsdp2_the_teacher_and_critic_are_sharded_and_the_stage_trains_alike(distilled, shapes_dir, tmp_path):
    """The stage under parallel=fsdp2 (one rank on the sharded code paths): student, teacher and critic are
    DTensor shards, the critic's checkpoint part a DCP folder, and the losses those of the single engine."""
    from opensora_lite.cli.curriculum import run

    run_dir, _, teacher = distilled
    overrides = _overrides(shapes_dir, tmp_path, teacher)
    fsdp2 = ["parallel=fsdp2", "parallel.shard_one_rank=true", "curriculum.stages.distill.evaluate=false"]
    port = os.environ.get("MASTER_PORT")
    run(compose([*overrides, *fsdp2]))
    # its one-process group's port stays its own: a Slurm job submitted later from this process exported it,
    # and two such jobs on one node collided on it (test_slurm's sweep: EADDRINUSE)
    assert os.environ.get("MASTER_PORT") == port
    log = "".join(p.read_text() for p in (tmp_path / "job" / "logs").glob("*"))
    assert "teacher and critic: sharded over 1 rank(s)" in log
    (ckpt,) = (tmp_path / "job" / "distill" / "checkpoints").glob("step_*")
    assert (ckpt / "critic_dcp" / ".metadata").is_file() and (ckpt / "model_dcp" / ".metadata").is_file()
    got, ref = _losses(tmp_path / "job"), _losses(run_dir)
    assert [s for s, *_ in got] == [s for s, *_ in ref]
    assert [v for r in got for v in r[1:]] == pytest.approx([v for r in ref for v in r[1:]], rel=1e-4)


def test_the_student_samples_on_its_own_schedule(distilled, tmp_path):
    from opensora_lite.cli.sample import sample

    run_dir, _, teacher = distilled
    student = json.loads((sample(compose([f"checkpoint={run_dir / 'distill'}", f"out={tmp_path / 's'}"], "sample"))
                          / "samples.json").read_text())  # fmt: skip
    assert student["num_steps"] == 4 and student["guidance"]["text_scale"] == 1.0
    assert student["model_evaluations_per_clip"] == 4
    # the teacher, with the run's guidance (text CFG: two forwards a step); a job's keys still win
    taught = json.loads((sample(compose([f"checkpoint={teacher}", f"out={tmp_path / 't'}", "num_steps=3"], "sample"))
                         / "samples.json").read_text())  # fmt: skip
    assert taught["num_steps"] == 3 and taught["model_evaluations_per_clip"] == 6
    forced = json.loads((sample(compose([f"checkpoint={run_dir / 'distill'}", f"out={tmp_path / 'f'}", "num_steps=2",
                                         "cfg_scale=2"], "sample")) / "samples.json").read_text())  # fmt: skip
    assert forced["num_steps"] == 2 and forced["model_evaluations_per_clip"] == 4


@pytest.mark.parametrize(
    "override, key",
    [
        ("curriculum.stages.distill.distill.gan_weight=0.1", "curriculum.stages.distill.distill.gan_weight"),
        ("curriculum.stages.distill.distill.method=rcm", "curriculum.stages.distill.distill.method"),
        ("curriculum.stages.distill.init=none", "curriculum.stages.distill.init"),
        ("curriculum.stages.distill.distill.critic_steps=0", "curriculum.stages.distill.distill.critic_steps"),
    ],
)
def test_a_distill_stage_that_cannot_run_is_one_config_error(override, key):
    with pytest.raises(ConfigError) as info:
        typed(["experiment=tiny_distill", override])
    assert info.value.key == key and "\n" not in str(info.value)


STEPS, SAVED, BATCH = 4, 2, 4


def _distill(kind: str, folder: str) -> dict:
    """DMD2 on a tiny MMDiT with synthetic batches, as the distill task runs it: the student prepared by the
    engine, the frozen teacher and the critic (a Companion) placed by it (all three sharded under fsdp2,
    the teacher and critic replicated under ZeRO-2); each rank takes its slice of every global batch.
    Checkpointed after step SAVED (student, its optimizer, the critic's DCP folder); then fresh models load
    that checkpoint and run the remaining steps. Returns the global (student, critic) losses per step of
    the uninterrupted run and of the resumed one, and whether the teacher and critic were sharded."""
    import copy

    import torch.distributed.checkpoint as dcp
    from conftest import tiny_mmdit
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    from opensora_lite.checkpoint.files import single_process_dcp
    from opensora_lite.config.schema import ParallelConfig
    from opensora_lite.diffusion.distill import critic_loss, dmd_loss, predict_x0
    from opensora_lite.diffusion.guidance import Guidance
    from opensora_lite.models.flux import SPEC
    from opensora_lite.models.flux.model import MMDiT
    from opensora_lite.parallel import build_engine
    from opensora_lite.train.tasks.companion import Companion

    engine = build_engine(ParallelConfig(engine=kind), "cpu")
    torch.manual_seed(0)
    base = MMDiT(tiny_mmdit(attention_backend="math"))
    for p in base.parameters():
        torch.nn.init.normal_(p, std=0.05)

    def models():
        model, teacher, critic = copy.deepcopy(base), copy.deepcopy(base).requires_grad_(False), copy.deepcopy(base)
        model, opt = engine.prepare(model, lambda ps: torch.optim.AdamW(ps, lr=1e-3, betas=(0.0, 0.99)), 1.0,
                                    SPEC.blocks(model))  # fmt: skip
        teacher = engine.shard_companion(teacher, SPEC.blocks(teacher))
        critic = Companion("critic", engine.shard_companion(critic, SPEC.blocks(critic)), 1e-3, (0.0, 0.99), 1e-8, 1.0)
        return model, opt, teacher, critic

    velocity = lambda m: lambda x, t, t5, clip, cond=None: SPEC.forward(m, x, t, t5, clip, cond)  # noqa: E731
    empty = (torch.zeros(1, 5, 16), torch.zeros(1, 8))
    mine = slice(engine.dp_rank * BATCH // engine.dp_size, (engine.dp_rank + 1) * BATCH // engine.dp_size)

    def train(model, opt, teacher, critic, steps) -> list[list[float]]:
        out = []
        for step in steps:
            g = torch.Generator().manual_seed(100 + step)
            x, noise, noise2 = (torch.randn(BATCH, 4, 3, 4, 6, generator=g) for _ in range(3))
            t, tau, tc = (torch.rand(BATCH, generator=g) for _ in range(3))
            txt, y = torch.randn(BATCH, 5, 16, generator=g), torch.randn(BATCH, 8, generator=g)
            x, noise, noise2, t, tau, tc, txt, y = (v[mine] for v in (x, noise, noise2, t, tau, tc, txt, y))
            x0_hat = predict_x0(x, SPEC.forward(model, x, t, txt, y, None), t, 1e-5)
            loss, _ = dmd_loss(x0_hat, velocity(teacher), velocity(critic.module), txt, y, empty, Guidance(3.0), None,
                               tau, noise, 1e-5)  # fmt: skip
            engine.backward(model, loss, sync=True)
            engine.step(model, opt)
            c = critic_loss(velocity(critic.module), x0_hat.detach(), txt, y, None, tc, noise2, 1e-5)
            c.backward()
            critic.step(engine.world_size)
            out.append([engine.all_reduce_mean(float(loss.detach())), engine.all_reduce_mean(float(c.detach()))])
        return out

    model, opt, teacher, critic = models()
    sharded = critic.sharded and all(hasattr(p, "device_mesh") for p in teacher.parameters())
    full = train(model, opt, teacher, critic, range(SAVED))
    ckpt = Path(folder)
    with single_process_dcp():
        dcp.save(get_model_state_dict(model), checkpoint_id=str(ckpt / "student"), no_dist=engine.world_size == 1)
    engine.save_optimizer(ckpt, model, opt)
    critic.save(ckpt)
    full += train(model, opt, teacher, critic, range(SAVED, STEPS))

    model, opt, teacher, critic = models()  # a new job: the base weights, no optimizer state, until loaded
    state = get_model_state_dict(model)
    with single_process_dcp():
        dcp.load(state, checkpoint_id=str(ckpt / "student"), no_dist=engine.world_size == 1)
    set_model_state_dict(model, state)
    engine.load_optimizer(ckpt, model, opt)
    critic.load(ckpt)
    resumed = train(model, opt, teacher, critic, range(SAVED, STEPS))
    engine.shutdown()
    return {"full": full, "resumed": resumed, "sharded": sharded}


@pytest.fixture(scope="module")
def distill_reference(tmp_path_factory) -> dict:
    return _distill("single", str(tmp_path_factory.mktemp("single")))


@pytest.mark.usefixtures("single_process_env")
@pytest.mark.parametrize("kind", ["fsdp2", "deepspeed_zero2"])
def test_two_ranks_distill_like_one_process_and_resume_bitwise(kind, distill_reference, tmp_path):
    """The student's and the critic's losses per step on 2 ranks equal one process's (the tolerance of
    tests/test_engines.py): the engine reduces the student's gradients; the critic's are reduce-scattered
    by FSDP where it is sharded (fsdp2 shards teacher and critic too) or all-reduced where replicated.
    A resume from the checkpoint after step 2 (the critic's own DCP folder, each rank its shards) gives
    the uninterrupted run's losses bitwise, on one process and on two."""
    from conftest import two_ranks

    ref = distill_reference
    assert ref["full"][-1][1] != ref["full"][0][1]  # the critic trains
    assert ref["resumed"] == ref["full"][SAVED:] and not ref["sharded"]
    got = two_ranks(_distill, tmp_path, kind, str(tmp_path / "ckpt"))
    assert [v for row in got["full"] for v in row] == pytest.approx([v for row in ref["full"] for v in row], rel=1e-5)
    assert got["resumed"] == got["full"][SAVED:]
    assert got["sharded"] == (kind == "fsdp2")


def test_a_lora_student_with_validation_and_a_student_with_ema(distilled, shapes_dir, tmp_path):
    """The loop's own parts apply to a distill stage unchanged: the student as a LoRA (its frozen base the
    teacher's weights) with the in-training validation; and the full student with its EMA (LoRA with EMA
    is refused for every stage)."""
    from opensora_lite.cli.curriculum import run

    run_dir, _, teacher = distilled
    s = "curriculum.stages.distill"
    short = [f"{s}.steps=2", f"{s}.checkpoint_every=0", f"{s}.evaluate=false"]
    original = load_file(teacher / "final" / "model.safetensors")

    lora = [f"{s}.lora.rank=4", f"{s}.validate_every=1", "sample.prompts=[a fast red circle moving right]"]
    run(compose([*_overrides(shapes_dir, tmp_path / "lora", teacher), *short, *lora]))
    job = tmp_path / "lora" / "job" / "distill"
    adapters = load_file(job / "final" / "adapters.safetensors")
    assert any("lora" in k for k in adapters) and sum("lora" not in k for k in adapters) < len(original) / 4
    merged = load_file(job / "final" / "model.safetensors")
    assert set(merged) == set(original) and any(not torch.equal(merged[k], original[k]) for k in merged)
    clips = sorted(p.name[:3] for p in (job / "validation" / "step_000001" / "samples").glob("*.mp4"))
    assert clips == ["i2v"] * 2 + ["t2v"] * 8  # the probes, sampled by the student during training

    run(compose([*_overrides(shapes_dir, tmp_path / "ema", teacher), *short, f"{s}.ema_decay=0.9"]))
    final = tmp_path / "ema" / "job" / "distill" / "final"
    student, ema = load_file(final / "model.safetensors"), load_file(final / "ema.safetensors")
    assert set(ema) == set(student)
    moved = [k for k in student if not torch.equal(student[k], original[k])]
    assert moved and any(not torch.equal(ema[k], student[k]) for k in moved)  # the shadow lags the student
