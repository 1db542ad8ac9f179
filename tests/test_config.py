"""The config tree: composition, the schema's type checks, cross-field validation, the CLI surface."""

from pathlib import Path

import pytest
from conftest import cli, compose, typed
from hydra.errors import ConfigCompositionException

from opensora_lite.errors import ConfigError


def test_default_is_the_tiny_cpu_experiment():
    cfg = typed()
    assert cfg.run.name == "tiny_cpu" and cfg.model.hidden_size == 128
    assert list(cfg.curriculum.stages) == ["image", "t2v", "i2v", "hires"]
    assert cfg.curriculum.stages["image"].init == "none" and cfg.curriculum.stages["t2v"].init == "previous"
    assert cfg.model.latent_channels == cfg.autoencoder.latent_channels == 12  # interpolated, not repeated


@pytest.mark.parametrize("curriculum", ["opensora2_h200", "opensora2_80gb"])
def test_opensora2_recipe_composes_and_validates(curriculum):
    cfg = typed(["experiment=opensora2", f"curriculum={curriculum}"])
    m = cfg.model
    assert (m.hidden_size, m.num_heads, m.depth, m.depth_single_blocks) == (3072, 24, 19, 38)
    assert (cfg.autoencoder.kind, cfg.autoencoder.scaling_factor, cfg.autoencoder.temporal_factor) == (
        "hunyuan",
        0.476986,
        4,
    )
    assert (cfg.text_encoder.t5.max_length, cfg.text_encoder.t5.dim, cfg.text_encoder.clip.dim) == (512, 4096, 768)
    stages = cfg.curriculum.stages
    assert list(stages) == ["t2v_256px", "i2v_256px", "hires_768px"]
    t2v = stages["t2v_256px"].buckets["256px"]
    assert sorted(t2v) == [1] + list(range(5, 130, 4))  # 1 + 4k frames for the causal VAE
    assert stages["i2v_256px"].tasks == {"t2v": 1.0, "i2v_head": 5.0, "i2v_loop": 1.0, "i2v_tail": 1.0}
    assert "768px" in stages["hires_768px"].buckets
    if curriculum == "opensora2_h200":
        assert t2v[1] == [1.0, 45] and t2v[33] == [1.0, 12] and t2v[129] == [1.0, 3]
    else:  # smaller per-GPU batches for 80 GB cards
        assert t2v[1][1] < 45 and t2v[33][1] < 12 and t2v[129][1] >= 1


@pytest.mark.parametrize(
    "experiment", sorted(p.stem for p in (Path(__file__).parents[1] / "configs" / "experiment").glob("*.yaml"))
)
def test_every_experiment_composes_and_validates(experiment):
    typed([f"experiment={experiment}"])  # to_config validates


@pytest.mark.parametrize(
    "override, theirs",
    [
        ("model.audio.latent_bins=4", "the model takes audio latents of 8 channels x 4 bins at 25 latent frames"),
        ("audio_autoencoder.latent_channels=16", "audio_autoencoder (mel_ae) gives 16 x 16 at 25"),
        ("audio_autoencoder.mel.hop_length=320", "audio_autoencoder (mel_ae) gives 8 x 16 at 12.5"),
    ],
)
def test_model_audio_must_match_the_audio_autoencoders_latents(override, theirs):
    """At start-up (the config's load, before any stage is built): one error line naming model.audio, both
    sides and the settings that would match, where the first step would otherwise fail in the model."""
    typed(["experiment=tiny_av"])  # model=tiny_av takes mel_ae_tiny's 8 x 16 latents at 25 a second
    with pytest.raises(ConfigError) as info:
        typed(["experiment=tiny_av", override])
    message = str(info.value)
    assert info.value.key == "model.audio" and "\n" not in message
    assert "curriculum.stages.t2av" in message and theirs in message
    assert "Set model.audio.latent_channels=" in message


def test_opensora2_finetune_starts_from_the_released_file_with_its_captions():
    cfg = typed(["experiment=opensora2_finetune"])
    ((_, stage),) = cfg.curriculum.stages.items()
    assert stage.init == "ckpts/Open_Sora_v2.safetensors" and "i2v_head" in stage.tasks  # cond_in loads
    assert (cfg.model.hidden_size, cfg.autoencoder.kind, cfg.text_encoder.t5.path) == (
        3072,
        "hunyuan",
        "ckpts/t5-v1_1-xxl",
    )
    assert cfg.data.caption_template == "{caption} {clip_fps:g} FPS, {vmaf_motion_int} motion score."
    assert cfg.data.image_caption_template == "{caption}" and cfg.sample.motion_score == 4
    assert typed(["experiment=opensora2"]).data.caption_template == "{caption}"  # caption=plain elsewhere


def _messages(exc: BaseException) -> str:
    out = []
    while exc is not None:
        out.append(str(exc))
        exc = exc.__cause__
    return "\n".join(out)


@pytest.mark.parametrize(
    "override,expected",
    [
        ("model.hidden_sizee=3", "Key 'hidden_sizee' not in 'MMDiTConfig'"),
        ("model.hidden_size=abc", "full_key: model.hidden_size"),
        ("curriculum.stages.t2v.steps=many", "full_key: curriculum.stages.t2v.steps"),
        ("curriculum.stages.t2v.stepz=3", "Key 'stepz' not in 'StageConfig'"),
    ],
)
def test_unknown_key_and_wrong_type_fail_at_composition_naming_the_key(override, expected):
    with pytest.raises(ConfigCompositionException) as info:
        compose([override])
    assert expected in _messages(info.value)


@pytest.mark.parametrize(
    "override,key",
    [
        ("model.num_heads=5", "model.num_heads"),
        ("model.axes_dim=[8,12,10]", "model.axes_dim"),
        ("model.latent_channels=16", "model.latent_channels"),
        ("autoencoder.latent_channels=16", "autoencoder.latent_channels"),  # the pixel AE has 3 * 2^2
        ("curriculum.stages.t2v.buckets={16px:{5:[1.0,2.5]}}", "curriculum.stages.t2v.buckets.16px.5"),
        ("curriculum.stages.t2v.buckets={16px:{5:[1.5,2]}}", "curriculum.stages.t2v.buckets.16px.5"),
        ("curriculum.stages.t2v.buckets={16px:{5:[1.0,two]}}", "curriculum.stages.t2v.buckets.16px.5"),
        ("++curriculum.stages.t2v.buckets={sixteen:{5:[1.0,2]}}", "curriculum.stages.t2v.buckets.sixteen"),
        ("++curriculum.stages.t2v.tasks={v2v:1.0}", "curriculum.stages.t2v.tasks.v2v"),
        ("curriculum.stages.image.init=previous", "curriculum.stages.image.init"),
        ("curriculum.stages.t2v.steps=0", "curriculum.stages.t2v.steps"),
        ("curriculum.stages.t2v.optim.schedule=linear", "curriculum.stages.t2v.optim.schedule"),
        ("run.stage=nope", "run.stage"),
        ("+model.hidden_sizee=3", "model.hidden_sizee"),  # '+' forces a key past the schema: still refused
        ("+curriculum.stages.t2v.optim.lr_max=3", "curriculum.stages.t2v.optim.lr_max"),
        ("parallel.engine=megatron", "parallel.engine"),
        ("parallel.sp_size=3", "parallel.sp_size"),  # does not divide the 4 heads
        ("parallel.param_dtype=fp8", "parallel.param_dtype"),
        ("parallel.hsdp_replicas=0", "parallel.hsdp_replicas"),
        (("parallel=deepspeed_zero2", "parallel.hsdp_replicas=2"), "parallel.hsdp_replicas"),  # fsdp2 only
        (("parallel=deepspeed_zero2", "parallel.meta_init=true"), "parallel.meta_init"),  # fsdp2 / zero3 only
        ("parallel.shard_one_rank=true", "parallel.shard_one_rank"),  # fsdp2 only (the default is single)
        (("parallel=fsdp2", "+parallel.options.stage=2"), "parallel.options"),  # fsdp2 takes no backend options
        (("parallel=colossalai_zero2", "parallel.sp_size=2"), "parallel.sp_size"),  # no sequence axis: hybrid_sp
        (("parallel=deepspeed_zero3", "curriculum.stages.t2v.ema_decay=0.99"), "curriculum.stages.t2v.ema_decay"),
        ("data.caption_template='{caption} {fsp}'", "data.caption_template"),
        ("data.image_caption_template='{caption} {fsp}'", "data.image_caption_template"),
        (("experiment=opensora2_finetune", "sample.motion_score=null"), "sample.motion_score"),
        ("sample.num_frames=0", "sample.num_frames"),  # 0 is not null: refused, not read as "the default"
        ("sample.fps=0", "sample.fps"),
        ("sample.batch_size=0", "sample.batch_size"),
    ],
)
def test_inconsistent_values_raise_config_error_naming_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        typed(list(override) if isinstance(override, tuple) else [override])
    assert info.value.key == key and str(info.value).startswith(key + ":")


@pytest.mark.parametrize("engine", ["deepspeed_zero2", "colossalai_hybrid_sp"])
def test_an_engine_whose_package_is_missing_is_one_error(monkeypatch, engine):
    import sys

    monkeypatch.setitem(sys.modules, engine.split("_")[0], None)  # how Python marks a module unimportable
    with pytest.raises(ConfigError, match=rf"parallel.engine: {engine} needs the .* package, which is not installed"):
        typed([f"parallel={engine}"])


def test_hunyuan_frame_counts_must_be_4k_plus_1():
    with pytest.raises(ConfigError, match=r"buckets.256px.32"):
        typed(["experiment=opensora2", "++curriculum.stages.t2v_256px.buckets={256px:{32:[1.0,2]}}"])


def test_cli_prints_config_and_rejects_bad_values_in_one_line():
    ok = cli("osl-curriculum", "experiment=opensora2", "--cfg", "job")
    assert ok.returncode == 0 and "hidden_size: 3072" in ok.stdout
    # resolved, as docs/cli.md says: the model's links to the autoencoder and text encoders are values
    assert "${" not in ok.stdout and "context_in_dim: 4096" in ok.stdout
    hydra_part = cli("osl-curriculum", "--cfg", "hydra")  # Hydra's own settings: printed as they are
    assert hydra_part.returncode == 0 and "${run.root}/${run.name}" in hydra_part.stdout
    bad = cli("osl-curriculum", "model.num_heads=5", "--cfg", "job")
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: model.num_heads: 5 does not divide hidden_size 128"
    typo = cli("osl-curriculum", "model.hidden_sizee=3")
    assert typo.returncode == 1 and "Key 'hidden_sizee' not in 'MMDiTConfig'" in typo.stderr
    assert "Traceback" not in typo.stderr
    unknown = cli("osl-curriculum", "experiment=nope")
    assert unknown.returncode == 1 and "Could not find 'experiment/nope'" in unknown.stderr


def test_a_typo_inside_a_user_yaml_names_the_file_and_key(tmp_path):
    (tmp_path / "stage").mkdir()
    (tmp_path / "stage" / "mine.yaml").write_text("steps: 10\nbukets: {}\n")
    out = cli("osl-curriculum", f"--config-dir={tmp_path}", "+stage@curriculum.stages.mine=mine", "--cfg", "job")
    assert out.returncode == 1 and "stage/mine" in out.stderr and "bukets" in out.stderr


@pytest.mark.parametrize("engine", ["fsdp2", "ddp", "single", "deepspeed_zero2", "colossalai_zero2"])
def test_async_checkpoint_is_said_to_be_synchronous_where_the_engine_cannot_write_in_the_background(engine):
    from opensora_lite.config.validate import async_checkpoint_note

    cfg = typed([f"parallel.engine={engine}", "curriculum.stages.t2v.async_checkpoint=true"])
    note = async_checkpoint_note(cfg, cfg.curriculum.stages["t2v"])
    if engine in ("fsdp2", "ddp", "single"):
        assert note is None
    else:
        assert note.startswith(f"async_checkpoint is not available with parallel={engine}") and "\n" not in note
    assert async_checkpoint_note(cfg, cfg.curriculum.stages["image"]) is None  # not asked for there


def test_the_default_output_folders_are_git_ignored():
    """What the commands write by default (runs, the Shapes data, the latent cache, the docs' export
    folder) stays out of `git status` of a checkout."""
    import shutil
    import subprocess

    from conftest import REPO

    from opensora_lite.config.schema import BuildDataConfig, Config

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    cfg = Config()
    paths = [
        f"{cfg.run.root}/{cfg.run.name}/config.yaml",
        f"{BuildDataConfig().out}/shapes-000000.tar",
        f"{cfg.data.cache_dir}/t2v-0123abcd/00000.tar",
        "exports/tiny/tiny.safetensors",  # docs/cli.md's osl-export out=exports/...
    ]
    out = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=REPO, capture_output=True, text=True)
    assert sorted(out.stdout.split()) == sorted(paths)


def test_a_run_config_written_before_ac_blocks_still_loads(tmp_path):
    """Runs started before the model spec saved parallel.ac_double_blocks / ac_single_blocks; their
    checkpoints still sample, export and resume: the keys read as parallel.ac_blocks."""
    from omegaconf import OmegaConf

    from opensora_lite.config.load import load_run_config

    saved = OmegaConf.to_container(compose(["parallel=fsdp2"]), resolve=True)
    del saved["parallel"]["ac_blocks"]
    saved["parallel"].update(ac_double_blocks=2, ac_single_blocks=0)
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    cfg = load_run_config(tmp_path / "t2v" / "final" / "model.safetensors")
    assert cfg.parallel.ac_blocks == {"double_blocks": 2, "single_blocks": 0}
    saved["parallel"]["ac_triple_blocks"] = 1  # a key no version wrote: one line naming it and the file
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    with pytest.raises(ConfigError, match=r"^parallel.ac_triple_blocks: .*\(in .*config.yaml\)"):
        load_run_config(tmp_path / "t2v" / "final" / "model.safetensors")
