"""A mini curriculum end to end: stage hand-off, run-directory layout, metrics, resume, sampling."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import TORCHRUN, cli, compose, mini_overrides
from omegaconf import OmegaConf
from safetensors import safe_open

from opensora_lite.checkpoint.files import load_weights
from opensora_lite.checkpoint.state import read_trainer_state
from opensora_lite.cli.curriculum import run
from opensora_lite.models.flux.flops import mmdit_flops
from opensora_lite.models.flux.model import MMDiTConfig
from opensora_lite.train.curriculum import format_results


def typed_model(cfg) -> MMDiTConfig:
    return MMDiTConfig(**OmegaConf.to_container(cfg.model, resolve=True))


def test_run_directory_layout_and_metrics(mini_run):
    run_dir, results = mini_run
    assert [r.name for r in results] == ["image", "t2v", "i2v"]
    assert (run_dir / "config.yaml").is_file() and (run_dir / "logs" / "train.log").is_file()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r and "event" not in r]
    assert {r["stage"] for r in steps} == {"image", "t2v", "i2v"}
    for key in ("loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s", "data_wait_s", "tflops_per_device"):
        assert all(r[key] is not None for r in steps), key
    # MFU: the analytic FLOPs at each step's real shapes (one bucket per batch; the T5 sequence length)
    composed = compose(mini_overrides(Path("."), Path(".")))
    model_cfg, text_tokens = typed_model(composed), composed.text_encoder.t5.max_length
    for r in (r for r in steps if r["stage"] == "t2v"):
        tokens = round(r["tokens_per_s"] / r["samples_per_s"])  # video tokens per sample
        per_sample = mmdit_flops(model_cfg, tokens, text_tokens).train
        assert r["tflops_per_device"] * 1e12 / r["samples_per_s"] == pytest.approx(per_sample, rel=1e-6)
        assert r["mfu"] == pytest.approx(r["tflops_per_device"] / 0.002)
    # the global step runs on across stages (W&B's x axis)
    assert [r["global_step"] for r in steps if r["stage"] == "t2v"] == [5, 6, 7]
    ends = {r["stage"]: r for r in records if r.get("event") == "stage_end"}
    assert set(ends) == {"image", "t2v", "i2v"} and "colour_acc" in ends["t2v"] and "i2v_colour_keep" in ends["i2v"]
    for stage in ("image", "t2v", "i2v"):
        final = run_dir / stage / "final"
        assert (final / "model.safetensors").is_file() and json.loads((final / "summary.json").read_text())[
            "name"
        ] == stage
        mp4s = sorted((run_dir / stage / "samples").glob("*.mp4"))
        assert mp4s
        with av.open(str(mp4s[0])) as container:
            assert sum(1 for _ in container.decode(video=0)) == (1 if stage == "image" else 5)
        assert (run_dir / stage / "contact_sheet_t2v.png").is_file()  # the stage's samples at a glance
    assert (run_dir / "i2v" / "contact_sheet_i2v.png").is_file() and not (
        run_dir / "t2v" / "contact_sheet_i2v.png"
    ).exists()
    assert sorted(p.name for p in (run_dir / "image" / "checkpoints").iterdir()) == ["step_00000002"]
    # the final table: one line per stage and the chance line, then each video stage's direction and speed
    # confusions ("static" apart), and the last stage's shape confusion ("none" apart)
    table = format_results(results)
    for head in ("t2v: motion direction", "t2v: speed", "i2v: motion direction", "i2v: speed", "i2v: shape"):
        assert f"{head}, prompt x read (24 clips)" in table, head
    assert "image: " not in table and "t2v: shape" not in table
    assert table.count("static") == 4  # t2v and i2v, direction and speed
    chance = next(line for line in table.splitlines() if line.startswith("chance")).split()
    assert chance[1:] == ["0.17", "0.25", "0.33", "0.50"]  # colour, direction, (i2v keep: none), shape, speed
    assert {"speed_acc", "shape_acc"} <= set(table.splitlines()[0].split())


def test_stage_zero_writes_a_bfl_flux_checkpoint(mini_run):
    run_dir, _ = mini_run
    with safe_open(str(run_dir / "image" / "final" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.metadata()["naming"] == "bfl-flux"
    assert {
        "img_in.weight",
        "txt_in.weight",
        "double_blocks.0.img_attn.qkv.weight",
        "single_blocks.1.linear2.weight",
        "final_layer.adaLN_modulation.1.weight",
    } <= keys
    assert not any(k.startswith("cond_in") for k in keys)
    assert any(k.startswith("cond_in") for k in load_weights(run_dir / "i2v" / "final" / "model.safetensors"))


def test_each_stage_reports_what_it_loaded(mini_run):
    run_dir, _ = mini_run
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    inits = {e["stage"]: e for e in events if e.get("event") == "init"}
    assert inits["t2v"]["source"].endswith("image/final/model.safetensors") and inits["t2v"]["missing"] == []
    assert inits["i2v"]["source"].endswith("t2v/final/model.safetensors")
    assert inits["i2v"]["missing"] == ["cond_in.weight", "cond_in.bias"]  # new, zero-initialised
    log = (run_dir / "logs" / "train.log").read_text()
    assert "missing 2 (cond_in)" in log


def test_next_stage_starts_from_the_previous_final_weights(shapes_dir, tmp_path):
    """With a vanishing learning rate the t2v stage must end where the image stage ended."""
    overrides = mini_overrides(shapes_dir, tmp_path) + [
        "~curriculum.stages.i2v",
        "curriculum.stages.t2v.steps=1",
        "curriculum.stages.t2v.optim.lr=1e-12",
        "curriculum.stages.t2v.optim.warmup_steps=0",
        "curriculum.stages.image.evaluate=false",
        "curriculum.stages.t2v.evaluate=false",
    ]
    run(compose(overrides))
    image = load_weights(tmp_path / "mini" / "image" / "final" / "model.safetensors")
    t2v = load_weights(tmp_path / "mini" / "t2v" / "final" / "model.safetensors")
    assert image.keys() == t2v.keys()
    assert max((image[k] - t2v[k]).abs().max().item() for k in image) < 1e-6
    fresh_gap = max((image[k]).abs().max().item() for k in image if k.startswith("final_layer.linear"))
    assert fresh_gap > 1e-3  # trained away from its zero init, so equality above is not trivial


def test_rerun_skips_done_stages_and_mid_stage_resume_is_exact(mini_run, shapes_dir, tmp_path):
    run_dir, results = mini_run
    again = run(compose(mini_overrides(shapes_dir, run_dir.parent)))
    assert [r.as_dict() for r in again] == [r.as_dict() for r in results]
    # Interrupt the image stage after its step-2 checkpoint: drop the later stages and the final weights.
    copy = tmp_path / "mini"
    shutil.copytree(run_dir, copy)
    for name in ("final",):
        shutil.rmtree(copy / "image" / name)
    for stage in ("t2v", "i2v"):
        shutil.rmtree(copy / stage)
    overrides = mini_overrides(shapes_dir, tmp_path) + ["run.stage=image"]
    resumed = run(compose(overrides))
    assert resumed[0].resumed_from == 2
    a = load_weights(run_dir / "image" / "final" / "model.safetensors")
    b = load_weights(copy / "image" / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed training diverged from the uninterrupted run"


def test_sample_cli_writes_videos_from_a_stage(mini_run, tmp_path):
    run_dir, _ = mini_run
    out = cli(
        "osl-sample",
        f"checkpoint={run_dir / 't2v'}",
        f"out={tmp_path / 't2v'}",
        "num_steps=2",
        "prompts=[a fast red circle moving left,a slow blue square moving up]",
    )
    assert out.returncode == 0, out.stderr
    assert len(list((tmp_path / "t2v").glob("t2v_*.mp4"))) == 2
    ref = next((run_dir / "image" / "samples").glob("*.mp4"))
    out = cli(
        "osl-sample",
        f"checkpoint={run_dir / 'i2v'}",
        f"out={tmp_path / 'i2v'}",
        "num_steps=2",
        f"image={ref}",
        "prompts=[a fast red circle moving left]",
        "resolution=32px",  # not in the stage's bucket table (16px): the 16px row's 5 frames at 32x32
    )
    assert out.returncode == 0, out.stderr
    (video,) = (tmp_path / "i2v").glob("i2v_*.mp4")
    assert json.loads((tmp_path / "i2v" / "samples.json").read_text())["frames_height_width"] == [5, 32, 32]
    assert _frames(video).shape == (5, 128, 128, 3)  # 32 px sides, enlarged 4x to be viewable (write_video)


def test_each_sample_call_gets_its_own_folder_and_record(mini_run, tmp_path):
    """Two calls without `out` write two numbered folders, each with its own contact sheet and
    samples.json listing exactly its mp4s; an `out` holding an earlier record, or num_frames=0, is
    one config error before any work."""
    from opensora_lite.cli.sample import sample
    from opensora_lite.errors import ConfigError

    run_dir, _ = mini_run
    stage = tmp_path / "run" / "t2v"
    shutil.copytree(run_dir / "t2v" / "final", stage / "final")
    shutil.copy(run_dir / "config.yaml", tmp_path / "run")
    job = [f"checkpoint={stage}", "num_steps=1"]
    first = sample(compose([*job, "prompts=[a fast red circle moving left]"], "sample"))
    second = sample(compose([*job, "prompts=[a slow blue square moving up]", "seed=5"], "sample"))
    assert (first, second) == (stage / "samples_cli" / "001", stage / "samples_cli" / "002")
    for folder, prompt, seed in (
        (first, "a fast red circle moving left", 0),
        (second, "a slow blue square moving up", 5),
    ):
        record = json.loads((folder / "samples.json").read_text())
        assert [(s["prompt"], s["seed"]) for s in record["samples"]] == [(prompt, seed)]
        assert {Path(s["video"]) for s in record["samples"]} == set(folder.glob("*.mp4"))
        assert (folder / "contact_sheet.png").is_file()
    for bad, key in ((f"out={first}", "out"), ("num_frames=0", "num_frames"), ("v2v_frames=0", "v2v_frames")):
        with pytest.raises(ConfigError) as info:
            sample(compose([*job, bad], "sample"))
        assert info.value.key == key and "\n" not in str(info.value)
    assert sorted(p.name for p in (stage / "samples_cli").iterdir()) == ["001", "002"]


def test_sample_cli_v2v_from_a_prompt_file_with_three_way_guidance(mini_run, tmp_path):
    """Prompts from a file, two seeds each, video extension with three-way guidance and oscillation:
    an mp4 per sample, the contact sheet and the settings json."""
    run_dir, _ = mini_run
    ref = sorted((run_dir / "t2v" / "samples").glob("*.mp4"))[0]
    rows = [
        {"prompt": "a fast red circle moving left", "reference": str(ref)},
        {"text": "a slow blue square moving up"},
    ]
    (tmp_path / "prompts.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    out = cli(
        "osl-sample",
        f"checkpoint={run_dir / 'i2v'}",
        f"out={tmp_path / 'v2v'}",
        f"prompt_file={tmp_path / 'prompts.jsonl'}",
        f"reference={ref}",
        "task=v2v_head",
        "v2v_frames=2",
        "num_samples=2",
        "num_steps=2",
        "image_cfg_scale=2.0",
        "text_oscillation=true",
    )
    assert out.returncode == 0, out.stderr
    settings = json.loads((tmp_path / "v2v" / "samples.json").read_text())
    assert [s["seed"] for s in settings["samples"]] == [0, 0, 1, 1]
    assert settings["guidance"]["image_scale"] == 2.0 and settings["guidance"]["text_oscillation"] is True
    assert settings["task"] == "v2v_head" and settings["v2v_frames"] == 2
    assert len(list((tmp_path / "v2v").glob("v2v_head_*.mp4"))) == 4
    assert (tmp_path / "v2v" / "contact_sheet.png").is_file()
    bad = cli("osl-sample", f"checkpoint={run_dir / 'i2v'}", f"out={tmp_path / 'bad'}", "task=i2v_loop")
    assert bad.returncode == 2 and "reference" in bad.stderr and "Traceback" not in bad.stderr
    no_ema = cli("osl-sample", f"checkpoint={run_dir / 'i2v'}", f"out={tmp_path / 'bad'}", "ema=true")
    assert no_ema.returncode == 2 and "no EMA weights" in no_ema.stderr  # the stage ran without EMA


def _frames(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]).astype(int)


def test_sequence_parallel_sampling_on_two_ranks_equals_one_process(mini_run, tmp_path):
    """torchrun with 2 gloo ranks splitting each video's tokens (parallel.sp_size=2) writes the videos one
    process writes, with three-way guidance on an I2V task and three samples (two batches)."""
    run_dir, _ = mini_run
    ref = sorted((run_dir / "t2v" / "samples").glob("*.mp4"))[0]
    args = [
        f"checkpoint={run_dir / 'i2v'}",
        "task=i2v_tail",
        f"reference={ref}",
        "num_steps=3",
        "num_samples=3",
        "batch_size=2",
        "image_cfg_scale=2.0",
        "prompts=[a fast red circle moving left]",
    ]
    one = cli("osl-sample", f"out={tmp_path / 'one'}", *args)
    assert one.returncode == 0, one.stderr
    cmd = [*TORCHRUN, "--nproc-per-node=2", "-m", "opensora_lite.cli.sample"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    sp = subprocess.run(
        [*cmd, f"out={tmp_path / 'sp'}", "parallel.sp_size=2", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert sp.returncode == 0, sp.stderr[-3000:]
    settings = json.loads((tmp_path / "sp" / "samples.json").read_text())
    assert settings["processes"] == 2 and settings["sp_size"] == 2
    names = sorted(p.name for p in (tmp_path / "one").glob("*.mp4"))
    assert len(names) == 3 and names == sorted(p.name for p in (tmp_path / "sp").glob("*.mp4"))
    for name in names:
        a, b = _frames(tmp_path / "one" / name), _frames(tmp_path / "sp" / name)
        assert a.shape == b.shape and np.abs(a - b).max() <= 2  # the same video up to float summation order
    seeds = _frames(tmp_path / "one" / names[0]), _frames(tmp_path / "one" / names[1])
    assert np.abs(seeds[0] - seeds[1]).mean() > 5  # other seeds give other videos: the check can fail


def test_multirun_sweeps_get_one_run_directory_each(shapes_dir, tmp_path):
    out = cli(
        "osl-train",
        "--multirun",
        *mini_overrides(shapes_dir, tmp_path, name="sweep"),
        "run.stage=image",
        "curriculum.stages.image.steps=2",
        "curriculum.stages.image.evaluate=false",
        "run.seed=0,1",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    dirs = sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert dirs == ["0_run.seed=0", "1_run.seed=1"]
    assert (tmp_path / "sweep" / "multirun.yaml").is_file()  # Hydra's sweep record, not in the cwd
    assert not (Path.cwd() / "multirun.yaml").exists()
    finals = [load_weights(tmp_path / "sweep" / d / "image" / "final" / "model.safetensors") for d in dirs]
    assert not torch.equal(finals[0]["img_in.weight"], finals[1]["img_in.weight"])  # the seed took effect


def test_resume_with_two_workers_and_undecodable_clips_is_exact(shapes_dir, tmp_path):
    """Resume at an odd batch count with two loader workers, over shards holding clips that fail to
    decode and 1-frame clips no bucket of the 5-frame stage takes: the checkpoint's loader state brings
    the stream back exactly (bitwise-equal weights). <stage>/skipped.tsv lists each skip (step, key,
    shard, reason; as osl-data lists skipped inputs), and the resumed run ends with the same list."""
    import sys

    from opensora_lite.data.video import encode_mp4

    sys.path.insert(0, str(Path(__file__).parent))
    from test_loader import _shard, _with_undecodable_clips

    data = tmp_path / "data"
    data.mkdir()
    for url in _with_undecodable_clips(shapes_dir, tmp_path):
        shutil.copy(url, data)
    one_frame = encode_mp4(np.full((1, 16, 16, 3), 200, np.uint8), 8.0)
    _shard(
        data / "stills.tar",
        [(f"still{i}.{ext}", blob) for i in range(12) for ext, blob in (("mp4", one_frame), ("txt", b"a red circle"))],
    )
    overrides = mini_overrides(data, tmp_path / "runs", name="w2") + [
        "data.num_workers=2",
        "run.stage=t2v",
        "curriculum.stages.t2v.init=none",
        "curriculum.stages.t2v.steps=5",
        "curriculum.stages.t2v.checkpoint_every=3",
        "curriculum.stages.t2v.evaluate=false",
    ]
    run(compose(overrides))
    stage = tmp_path / "runs" / "w2" / "t2v"
    state = read_trainer_state(stage / "checkpoints" / "step_00000003")
    assert state["data"]["batches"] == 3 and state["data"]["failed"]  # some cut clips were met
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "runs", copy)
    shutil.rmtree(copy / "w2" / "t2v" / "final")
    for later in ("checkpoints/step_00000004", "checkpoints/step_00000005"):
        shutil.rmtree(copy / "w2" / "t2v" / later, ignore_errors=True)
    resumed = run(compose([*overrides, f"run.root={copy}"]))
    assert resumed[0].resumed_from == 3
    a = load_weights(stage / "final" / "model.safetensors")
    b = load_weights(copy / "w2" / "t2v" / "final" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed training diverged from the uninterrupted run"
    lines = (stage / "skipped.tsv").read_text().splitlines()
    assert lines[0] == "step\tkey\tshard\treason"
    rows = [line.split("\t") for line in lines[1:]]
    assert {(key, shard) for _, key, shard, reason in rows if reason == "no_bucket"} <= {
        (f"still{i}", str(data / "stills.tar")) for i in range(12)
    }
    assert {r[3] for r in rows} == {"no_bucket", "corrupt_video"}
    assert all(shard == str(data / "cut.tar") for _, _, shard, reason in rows if reason == "corrupt_video")
    steps = [int(r[0]) for r in rows]
    assert steps == sorted(steps) and steps[0] <= 3 < steps[-1]  # listed before and after the checkpoint
    # the copy held the whole list when it resumed from step 3: it ends with the same rows, none twice
    assert (copy / "w2" / "t2v" / "skipped.tsv").read_text().splitlines() == lines


def test_trainer_state_is_json_and_tensors_and_a_folder_without_one_is_refused(tmp_path):
    """The trainer state round-trips through JSON + safetensors exactly (generator states included); a
    checkpoint folder without one (a pickle of some other tool, say) is refused with one error naming it."""
    from opensora_lite.checkpoint.state import write_trainer_state
    from opensora_lite.errors import CheckpointError

    gen = torch.Generator().manual_seed(7)
    state = {"step": 3, "data": {"batches": 3, "failed": ["0/a"]}, "scheduler": {"base_lrs": [1e-3], "x": None},
             "generators": [gen.get_state(), gen.get_state()]}  # fmt: skip
    write_trainer_state(tmp_path, state)
    back = read_trainer_state(tmp_path)
    assert back["step"] == 3 and back["data"] == state["data"] and back["scheduler"] == state["scheduler"]
    assert all(torch.equal(a, b) for a, b in zip(back["generators"], state["generators"]))
    assert not (tmp_path / "trainer_state.pt").exists()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    torch.save({"step": 1}, foreign / "trainer_state.pt")
    with pytest.raises(CheckpointError, match="has no trainer state \\(trainer_state.json\\)"):
        read_trainer_state(foreign)
    with pytest.raises(TypeError, match="state.x: set is not JSON"):
        write_trainer_state(tmp_path, {"x": {1, 2}})
