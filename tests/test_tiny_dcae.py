"""experiment=tiny_dcae: a DC-AE trained in the curriculum's first stage, then diffusion stages on its
latents (`stage.autoencoder: stage:ae`): its final EMA weights, and latents scaled by the statistics its
evaluation measured."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import cli, typed

from opensora_lite.autoencoders import build_autoencoder
from opensora_lite.checkpoint.files import load_weights
from opensora_lite.config.stages import stage_config
from opensora_lite.data.cache import bucket_table
from opensora_lite.data.loader import BucketedVideoStream, expand_shards, frames_on_device
from opensora_lite.errors import ConfigError


def _overrides(data: Path, root: Path) -> list[str]:
    s = "curriculum.stages"
    return [
        "experiment=tiny_dcae",
        f"data.shards={data}",
        "data.aspect_ratios=[0.75,1.0,1.3333]",
        "data.num_workers=0",
        f"run.root={root}",
        "logger.progress_bar=false",
        "eval.val_batches=1",
        "eval.repeats=1",
        "eval.i2v_clips=4",
        "sample.num_steps=4",
        f"{s}.ae.steps=6",
        f"{s}.ae.buckets={{16px:{{8:[1.0,4]}}}}",
        f"{s}.image.steps=2",
        f"{s}.image.buckets={{16px:{{1:[1.0,8]}}}}",
        f"{s}.image.evaluate=false",
        f"{s}.t2v.steps=2",
        f"{s}.t2v.buckets={{16px:{{8:[1.0,4]}}}}",
        f"{s}.t2v.evaluate=false",
        f"{s}.i2v.steps=2",
        f"{s}.i2v.buckets={{16px:{{8:[1.0,4]}}}}",
    ]


def test_diffusion_stages_train_on_the_autoencoder_the_first_stage_trained(shapes_dir, tmp_path):
    overrides = _overrides(shapes_dir, tmp_path)
    out = cli("osl-curriculum", *overrides)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run = tmp_path / "tiny_dcae"
    trained = run / "ae" / "final" / "ema.safetensors"
    log = out.stdout + out.stderr
    # built once when the image stage starts, from the trained EMA weights; shared by t2v and i2v
    assert log.count(f"building autoencoder dc_ae ({trained})") == 1, log[-3000:]
    stats = json.loads((run / "ae" / "final" / "summary.json").read_text())["metrics"]
    assert stats["latent_std"] > 0 and "psnr" in stats
    summary = json.loads((run / "i2v" / "final" / "summary.json").read_text())
    assert summary["steps"] == 2 and "direction_acc" in summary["metrics"]

    cfg = typed(overrides)
    view = stage_config(cfg, "t2v").autoencoder
    assert view.path == str(trained)
    assert view.scaling_factor == pytest.approx(1 / stats["latent_std"]) and view.shift_factor == stats["latent_mean"]
    ae = build_autoencoder(view)
    weights = load_weights(trained)
    assert all(torch.equal(ae.state_dict()[k], weights[k]) for k in weights)
    # the measured scale makes the latents of other clips about zero-mean and unit-variance
    stage = cfg.curriculum.stages["t2v"]
    stream = BucketedVideoStream(expand_shards(cfg.data.shards), bucket_table(cfg, stage), cfg.data.target_fps, seed=7)
    items = [item for url in stream.urls for item in stream.items(url, 0, Counter())]
    items = [item for item in items if item.bucket.height == item.bucket.width][:8]  # square: one batch
    latents = ae.encode(frames_on_device(BucketedVideoStream.collate(items, Counter(), [])["video"], "cpu"))
    assert latents.shape[1:] == (8, 2, 4, 4)
    assert abs(float(latents.mean())) < 0.5 and 0.5 < float(latents.std()) < 2.0


@pytest.mark.parametrize(
    "spec, why",
    [
        ("stage:nope", "names no earlier stage of kind autoencoder"),
        ("stage:image", "names no earlier stage of kind autoencoder"),  # a diffusion stage
        ("stage:t2v", "names no earlier stage of kind autoencoder"),  # itself
    ],
)
def test_a_stage_reference_that_trains_no_autoencoder_is_one_error(spec, why):
    with pytest.raises(ConfigError, match=rf"curriculum.stages.t2v.autoencoder: {spec} {why} \(those: \['ae'\]\)"):
        typed(["experiment=tiny_dcae", f"curriculum.stages.t2v.autoencoder={spec}"])
