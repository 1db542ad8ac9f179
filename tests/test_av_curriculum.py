"""The audio stage of a curriculum (experiment=tiny_av, docs/audio-video.md), run for real on Shapes with
sound: an autoencoder stage trains the audio autoencoder, a text-to-video stage the video model, and the
audio_video stage starts from the T2V weights with its audio layers initialised and encodes the sound with
the trained audio autoencoder named by `audio_autoencoder.path: stage:<name>`, its latents scaled by the
statistics that stage measured."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import compose, typed
from safetensors.torch import load_file

from opensora_lite.config.stages import stage_config
from opensora_lite.errors import ConfigError


def _overrides(data: Path, root: Path) -> list[str]:
    """experiment=tiny_av cut to seconds: 3 audio autoencoder steps, no image stage, 1 T2V step from scratch,
    4 audio+video steps (a checkpoint at step 2); only the autoencoder stage evaluates (it measures the
    latent statistics)."""
    c = "curriculum.stages"
    return ["experiment=tiny_av", f"data.shards={data}", "data.num_workers=0", f"run.root={root}", "run.name=job",
            "logger.progress_bar=false", "eval.val_batches=1", "audio_autoencoder.mel.griffin_lim_iters=2",
            "audio_autoencoder.mel_ae.widths=[8,16,16]",
            f"{c}.audio_ae.steps=3", f"{c}.audio_ae.buckets={{16px:{{8:[1.0,4]}}}}", "~curriculum.stages.image",
            f"{c}.t2v.init=none", f"{c}.t2v.steps=1", f"{c}.t2v.buckets={{16px:{{5:[1.0,4]}}}}",
            f"{c}.t2v.evaluate=false", f"{c}.t2av.steps=4", f"{c}.t2av.buckets={{16px:{{5:[1.0,4]}}}}",
            f"{c}.t2av.log_every=1", f"{c}.t2av.checkpoint_every=2", f"{c}.t2av.evaluate=false"]  # fmt: skip


def test_the_audio_stage_adds_sound_to_the_t2v_model_on_the_trained_audio_autoencoder(av_clips, tmp_path):
    from opensora_lite.cli.curriculum import run

    cfg = typed(_overrides(av_clips, tmp_path))
    run(compose(_overrides(av_clips, tmp_path)))
    job = tmp_path / "job"
    stats = json.loads((job / "audio_ae" / "final" / "summary.json").read_text())["metrics"]

    # stage:audio_ae resolves per stage: the stage that trains it starts from scratch; the audio stage gets
    # its EMA weights (those it was evaluated with) and the latents at zero mean and unit variance
    assert stage_config(cfg, "audio_ae").audio_autoencoder.path is None
    a = stage_config(cfg, "t2av").audio_autoencoder
    assert a.path == str(job / "audio_ae" / "final" / "ema.safetensors")
    assert (a.scaling_factor, a.shift_factor) == (1.0 / stats["latent_std"], stats["latent_mean"])
    log = (job / "logs" / "train.log").read_text()
    assert f"building audio autoencoder mel_ae ({a.path})" in log

    # the T2V stage trained the video model (model.audio belongs to the audio stage); the audio stage loaded
    # it with the audio layers initialised, and trained and saved them
    t2v, t2av = (load_file(job / s / "final" / "model.safetensors") for s in ("t2v", "t2av"))
    assert not any(k.startswith("audio_") for k in t2v)
    assert {k for k in t2av if not k.startswith("audio_")} == set(t2v)
    assert {"audio_in", "audio_blocks", "audio_final_layer"} <= {k.split(".")[0] for k in t2av}
    assert "missing 62 (audio_blocks, audio_final_layer, audio_in)" in log

    steps = _audio_stage_rows(job)
    assert len(steps) == 4 and all(r["loss_video"] > 0 and r["loss_audio"] > 0 for r in steps)

    # exact resume: the audio stage as a job stopped after its step-2 checkpoint leaves it (its final
    # weights and later checkpoints gone) resumes to the same losses and weights, the loss balance's running
    # means, the optimizer, the data position and the noise included
    shutil.rmtree(job / "t2av" / "final")
    for later in (p for p in (job / "t2av" / "checkpoints").glob("step_*") if int(p.name.split("_")[1]) > 2):
        shutil.rmtree(later)
    run(compose(_overrides(av_clips, tmp_path)))
    assert "step_00000002 (step 2)" in (job / "logs" / "train.log").read_text()  # "[t2av] resumed from ..."
    again = _audio_stage_rows(job)
    key = ("step", "loss", "loss_video", "loss_audio", "loss_scale_video", "loss_scale_audio")
    assert [[r[k] for k in key] for r in again] == [[r[k] for k in key] for r in steps]  # each step once
    resumed = load_file(job / "t2av" / "final" / "model.safetensors")
    assert all(torch.equal(resumed[k], t2av[k]) for k in t2av)


def _audio_stage_rows(job: Path) -> list[dict]:
    rows = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("stage") == "t2av" and "event" not in r and "loss" in r]


@pytest.mark.parametrize("source", ["t2v", "nowhere", "t2av"])
def test_a_stage_path_that_names_no_earlier_audio_autoencoder_stage_is_one_config_error(source):
    with pytest.raises(ConfigError) as info:
        typed(["experiment=tiny_av", f"audio_autoencoder.path=stage:{source}"])
    assert info.value.key == "audio_autoencoder.path" and "those: ['audio_ae']" in str(info.value)
