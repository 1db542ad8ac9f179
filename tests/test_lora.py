"""LoRA stages (stage.lora, docs/lora.md): real peft adapters on our MMDiT, real diffusers Flux.

- the adapters exported by osl-export (formats=[lora]) load into diffusers' FluxTransformer2DModel with
  its own load_lora_adapter and reproduce our LoRA model's output; the merged weights equal it too;
- engines: only the adapters train; fsdp2 and deepspeed_zero2 on 2 gloo ranks follow the one-process
  trajectory, and a checkpoint (adapters + optimizer state, no base weights) resumes it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import cli, compose, mini_overrides, tiny_mmdit, two_ranks, typed

from benchmarks.flux_reference import diffusers_forward, matching_mmdit, random_diffusers_flux
from opensora_lite.checkpoint.files import load_weights, write_safetensors
from opensora_lite.config.schema import ExportJobConfig, LoraConfig, ParallelConfig, StageConfig
from opensora_lite.layout import ADAPTER_FILE
from opensora_lite.models.flux import SPEC as FLUX
from opensora_lite.models.flux.model import MMDiT
from opensora_lite.models.flux.rope import video_position_ids
from opensora_lite.models.lora import adapter_metadata, apply_lora, load_adapters, merge_adapters, stored_name

RANK, ALPHA = 4, 8.0
ALL = ["attention", "mlp", "modulation", "text_in", "final_layer[.]adaLN_modulation[.]1"]  # + (shift, scale) swap


@pytest.fixture(scope="module")
def lora_flux():
    """diffusers Flux with random weights, our MMDiT with the same weights plus LoRA on every block linear
    (random B, so the adapters change the output), and one set of packed inputs."""
    ref = random_diffusers_flux(2, 2, 2, 24, [8, 8, 8], False, 16, 8, in_channels=16)
    ours = matching_mmdit(ref, backend="math")
    g = torch.Generator().manual_seed(1)
    inputs = (
        torch.randn(2, 12, 16, generator=g),
        video_position_ids(1, 3, 4),
        torch.randn(2, 5, 16, generator=g),
        torch.zeros(5, 3),
        torch.rand(2, generator=g),
        torch.randn(2, 8, generator=g),
    )
    with torch.no_grad():
        base = ours.forward_tokens(*inputs)
        apply_lora(ours, RANK, ALPHA, 0.0, ALL, FLUX.lora_groups, FLUX.lora_also_train)
        for name, p in ours.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5, generator=g)
        adapted = ours.forward_tokens(*inputs)
    assert (adapted - base).abs().max() > 0.05 * base.abs().max()  # the adapters matter
    return ref, ours, inputs, adapted


def test_exported_adapters_load_into_diffusers_flux_and_reproduce_ours(lora_flux, tmp_path, capsys):
    from opensora_lite.cli.export import LORA_FILE, export

    ref, ours, inputs, adapted = lora_flux
    adapters = {stored_name(n): p.detach() for n, p in ours.named_parameters() if p.requires_grad}
    (tmp_path / "final").mkdir()
    write_safetensors(adapters, tmp_path / "final" / ADAPTER_FILE, adapter_metadata(RANK, ALPHA, ALL))
    [path] = export(
        ExportJobConfig(checkpoint=str(tmp_path), out=str(tmp_path / "out"), formats=["lora"], dtype="fp32")
    )
    assert path == tmp_path / "out" / "lora" / LORA_FILE
    assert f"wrote {path} (diffusers Flux LoRA" in capsys.readouterr().out  # osl-export says where it wrote
    ref.load_lora_adapter(str(path.parent), weight_name=LORA_FILE, prefix="transformer", adapter_name="ours")
    try:
        with torch.no_grad():
            theirs = diffusers_forward(ref, *inputs)
    finally:
        ref.delete_adapters("ours")
    torch.testing.assert_close(theirs, adapted, rtol=1e-5, atol=1e-5 * adapted.abs().max().item())


def test_merged_weights_equal_the_lora_model(lora_flux):
    _, ours, inputs, adapted = lora_flux
    merged = merge_adapters(ours.state_dict(), ALPHA / RANK)
    plain = MMDiT(ours.cfg)
    plain.load_state_dict(merged, strict=True)  # plain BFL names: what every reader and osl-export takes
    with torch.no_grad():
        torch.testing.assert_close(plain.forward_tokens(*inputs), adapted, rtol=1e-5, atol=1e-6)


# -- engines ------------------------------------------------------------------------------------------
STEPS, SAVE_AT, BATCH = 4, 2, 4


def _train(kind: str, first: int, last: int, load: str | None, save: str | None) -> list[float]:
    """What a LoRA stage does, on this process's slice of each global batch: base weights from the same
    seed, adapters, prepare, steps; the checkpoint is the adapters + the engine's optimizer state."""
    from opensora_lite.parallel import build_engine
    from opensora_lite.train.adapters import StageLora

    engine = build_engine(ParallelConfig(engine=kind), "cpu")
    torch.manual_seed(0)
    model = MMDiT(tiny_mmdit(attention_backend="math"))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    lora = StageLora(StageConfig(lora=LoraConfig(rank=RANK, alpha=ALPHA, targets=ALL)), engine, "fp32", FLUX)
    lora.prepare(model, "test")
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    if load:
        load_adapters(model, load_weights(Path(load) / ADAPTER_FILE), load)
    model, opt = engine.prepare(model, lambda params: torch.optim.AdamW(params, lr=2e-3), 0.5, FLUX.blocks(model))
    if load:
        engine.load_optimizer(Path(load), model, opt)
    per = BATCH // engine.dp_size
    losses = []
    for step in range(first, last):
        g = torch.Generator().manual_seed(100)  # one batch: the loss must fall
        batch = (torch.randn(BATCH, 4, 3, 4, 6, generator=g), torch.rand(BATCH, generator=g))
        batch += (torch.randn(BATCH, 5, 16, generator=g), torch.randn(BATCH, 8, generator=g))
        x, t, txt, y = (v[engine.dp_rank * per : (engine.dp_rank + 1) * per] for v in batch)
        loss = (model(x, t, txt, y) - x).pow(2).mean()
        engine.backward(model, loss)
        engine.step(model, opt)
        losses.append(engine.all_reduce_mean(float(loss.detach())))
        if save and step + 1 == SAVE_AT:
            if engine.is_main:
                Path(save).mkdir(parents=True, exist_ok=True)
            engine.barrier()
            lora.save(Path(save), model)
            engine.save_optimizer(Path(save), model, opt)
            engine.barrier()
    full = engine.full_state_dict(model)  # gathered, on rank 0
    merged = lora.split(model, full)[0]
    if engine.is_main:  # the base did not move; the merged weights did where adapters sit
        assert all(torch.equal(full[n], v) for n, v in frozen.items())
        qkv = "double_blocks.0.img_attn.qkv"
        assert not torch.equal(merged[f"{qkv}.weight"], full[f"{qkv}.base_layer.weight"])
    return losses  # the process group stays for the next job of these processes (DeepSpeed keeps its groups)


def _jobs(kind: str, jobs: list[tuple]) -> list[list[float]]:
    losses = [_train(kind, *args) for args in jobs]  # one after another in the same processes (a fresh engine each)
    dist.barrier()
    dist.destroy_process_group()
    return losses


pytestmark = pytest.mark.usefixtures("single_process_env")


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[list[float], Path]:
    folder = tmp_path_factory.mktemp("lora_reference") / "ckpt"
    losses = _train("single", 0, STEPS, None, str(folder))
    assert losses[-1] < losses[0]  # the adapters train
    return losses, folder


def test_single_process_lora_checkpoint_is_small_and_resumes_exactly(reference):
    ref, folder = reference
    adapters = load_weights(folder / ADAPTER_FILE)
    assert all(".lora_" in k for k in adapters)  # no base weights in the checkpoint
    full = sum(p.numel() for p in MMDiT(tiny_mmdit()).parameters())
    assert sum(v.numel() for v in adapters.values()) < 0.5 * full
    assert _train("single", SAVE_AT, STEPS, str(folder), None) == ref[SAVE_AT:]  # bitwise


@pytest.mark.parametrize("kind", ["ddp", "fsdp2", "deepspeed_zero2"])
def test_lora_on_two_ranks_matches_one_process_and_resumes(kind, reference, tmp_path):
    ref, _ = reference
    ckpt = str(tmp_path / "ckpt")
    run, resumed = two_ranks(_jobs, tmp_path, kind, [(0, STEPS, None, ckpt), (SAVE_AT, STEPS, ckpt, None)])
    assert run == pytest.approx(ref, rel=1e-5)
    assert resumed == pytest.approx(run[SAVE_AT:], rel=1e-5)
    if kind == "deepspeed_zero2":  # DeepSpeed's own checkpoint leaves the frozen base out too
        size = sum(f.stat().st_size for f in (tmp_path / "ckpt" / "optim_deepspeed").rglob("*model_states*"))
        assert size < 0.5 * 4 * sum(p.numel() for p in MMDiT(tiny_mmdit()).parameters())


def test_i2v_cond_in_trains_fully_or_stays_frozen_by_config():
    for train_cond_in in (True, False):
        model = MMDiT(tiny_mmdit(), image_condition=True)
        apply_lora(
            model, RANK, ALPHA, 0.0, ["attention"], FLUX.lora_groups, FLUX.lora_also_train if train_cond_in else ()
        )
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert ("cond_in.weight" in trainable) == train_cond_in
        assert all(".lora_" in n for n in trainable - {"cond_in.weight", "cond_in.bias"})
        assert not any("img_mlp" in n for n in trainable)  # attention only: the MLPs keep no adapters


def test_curriculum_full_then_lora_then_full_with_exact_lora_resume(shapes_dir, tmp_path):
    """image (full) -> t2v (LoRA, mid-stage checkpoints) -> i2v (full, from the merged t2v model); then the
    t2v stage interrupted after its step-1 checkpoint resumes to bitwise the same adapters and weights."""
    from opensora_lite.cli.curriculum import run

    overrides = mini_overrides(shapes_dir, tmp_path) + [
        "curriculum.stages.image.evaluate=false",
        "curriculum.stages.i2v.evaluate=false",
        "curriculum.stages.t2v.lora.rank=4",
        "curriculum.stages.t2v.lora.alpha=4",
        "curriculum.stages.t2v.checkpoint_every=1",
    ]
    run(compose(overrides))
    stage = tmp_path / "mini" / "t2v"
    ckpt = stage / "checkpoints" / "step_00000001"
    assert (ckpt / ADAPTER_FILE).is_file() and not (ckpt / "model.safetensors").exists()
    image = load_weights(tmp_path / "mini" / "image" / "final" / "model.safetensors")
    merged = load_weights(stage / "final" / "model.safetensors")
    assert merged.keys() == image.keys()  # plain BFL names: the next stage, osl-sample and osl-export read it
    adapters = load_weights(stage / "final" / ADAPTER_FILE)
    assert sum(v.numel() for v in adapters.values()) < 0.5 * sum(v.numel() for v in image.values())
    moved = [k for k in image if not torch.equal(image[k], merged[k])]
    assert moved and all(".img_attn." in k or ".txt_attn." in k or "mlp" in k or "linear" in k for k in moved)
    assert (tmp_path / "mini" / "i2v" / "final" / "model.safetensors").is_file()  # full stage after LoRA

    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "mini", copy / "mini")
    shutil.rmtree(copy / "mini" / "t2v" / "final")
    shutil.rmtree(copy / "mini" / "t2v" / "checkpoints" / "step_00000002")
    resumed = run(
        compose(
            mini_overrides(shapes_dir, copy) + overrides[len(mini_overrides(shapes_dir, copy)) :] + ["run.stage=t2v"]
        )
    )
    assert resumed[0].resumed_from == 1
    again = load_weights(copy / "mini" / "t2v" / "final" / ADAPTER_FILE)
    assert all(torch.equal(adapters[k], again[k]) for k in adapters), "the resumed LoRA stage diverged"
    again = load_weights(copy / "mini" / "t2v" / "final" / "model.safetensors")
    assert all(torch.equal(merged[k], again[k]) for k in merged)


@pytest.mark.parametrize(
    ("overrides", "key", "says"),
    [
        (["parallel=colossalai_zero2"], "lora.rank", "LoRA is not supported with parallel=colossalai_zero2"),
        (["curriculum.stages.t2v.lora.targets=[attention,'mlp[']"], "lora.targets", "neither a group"),
        (["curriculum.stages.t2v.lora.rank=-1"], "lora.rank", "must be >= 0"),
        (["curriculum.stages.t2v.ema_decay=0.9"], "lora.rank", "EMA of the adapters"),
        (["parallel=fsdp2", "curriculum.stages.t2v.lora.base_dtype=bf16"], "lora.base_dtype", "single | ddp"),
        (["run.dtype=fp32", "curriculum.stages.t2v.lora.base_dtype=bf16"], "lora.base_dtype", "run.dtype=bf16"),
    ],
)
def test_lora_settings_it_cannot_run_are_one_config_error(overrides, key, says):
    from opensora_lite.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        typed(["curriculum=tiny", "curriculum.stages.t2v.lora.rank=4", *overrides])
    assert info.value.key == f"curriculum.stages.t2v.{key}" and says in str(info.value)
    assert "\n" not in str(info.value)


def test_a_lora_stage_without_peft_is_one_line_naming_the_extra_before_anything_is_created(shapes_dir, tmp_path):
    """The quickstart install has no peft (the lora extra). `osl-curriculum experiment=tiny_lora` then
    stops at start-up with one line naming the extra, and leaves no run directory. peft is hidden for
    real: a sitecustomize marks it unimportable in the CLI's own process (as Python does for a module
    that failed to import)."""
    hide = tmp_path / "no_peft"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\n\nsys.modules['peft'] = None\n")
    runs = tmp_path / "runs"
    args = [f"data.shards={shapes_dir}", f"run.root={runs}", "curriculum.stages.orange.init=none"]
    out = cli("osl-curriculum", "experiment=tiny_lora", *args, env={"PYTHONPATH": str(hide)})
    assert out.returncode == 2, out.stderr[-3000:]
    assert out.stderr.strip().splitlines() == [
        "error: curriculum.stages.orange.lora.rank: a LoRA stage needs the peft package, which is not "
        "installed: add the lora extra (scripts/install.sh lora, or pip install -e '.[lora]'; docs/lora.md)"
    ]
    assert not runs.exists()


def test_peft_is_needed_only_where_a_lora_stage_runs(monkeypatch):
    import sys

    from opensora_lite.errors import ConfigError

    monkeypatch.setitem(sys.modules, "peft", None)
    lora_t2v = ["curriculum=tiny", "curriculum.stages.t2v.lora.rank=4"]
    with pytest.raises(ConfigError, match="lora extra") as info:
        typed([*lora_t2v, "run.stage=t2v"])
    assert info.value.key == "curriculum.stages.t2v.lora.rank"
    typed([*lora_t2v, "run.stage=image"])  # osl-train of a full-training stage of the same curriculum


def test_tiny_lora_experiment_teaches_a_colour_the_base_data_lacks():
    import numpy as np

    from opensora_lite.data.synthetic import COLOURS, ShapesConfig, render_clip

    cfg = typed(["experiment=tiny_lora"])
    stage = cfg.curriculum.stages["orange"]
    assert stage.lora.rank == 8 and stage.init == "runs/tiny_cpu/hires" and cfg.data.shards == "data/shapes_orange"
    assert "orange" not in COLOURS  # the tiny curriculum's data, prompts and evaluation never show it
    frames, meta = render_clip(np.random.default_rng(0), ShapesConfig(colours=["orange"]))
    assert meta["colour"] == "orange" and "orange" in meta["caption"]
