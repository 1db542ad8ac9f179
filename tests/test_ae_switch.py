"""Switching autoencoders inside a curriculum (stage.autoencoder): the latent-space layers are
re-initialised, every other tensor carried over, and the report reaches the log and summary.json."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import compose, typed

from opensora_lite.config.stages import stage_config, switches_autoencoder
from opensora_lite.errors import CheckpointError, ConfigError
from opensora_lite.models.flux import SPEC as FLUX
from opensora_lite.models.flux.model import MMDiT
from opensora_lite.train.stage_init import load_across_latent_spaces

SWITCH = ["~curriculum.stages.t2v", "~curriculum.stages.i2v", "~curriculum.stages.hires"]
SWITCH += ["+stage@curriculum.stages.dcae=tiny_dcae"]


def test_reinitialises_only_the_latent_layers_and_carries_the_rest():
    cfg = typed(SWITCH)
    assert switches_autoencoder(cfg, "dcae") and not switches_autoencoder(cfg, "image")
    view = stage_config(cfg, "dcae")
    assert (view.model.latent_channels, view.model.patch_size) == (8, [1, 1, 1])
    torch.manual_seed(0)
    parent = MMDiT(cfg.model, image_condition=True)  # 12 pixel channels
    torch.manual_seed(1)
    child = MMDiT(view.model, image_condition=True)  # 8 DC-AE channels
    fresh = {k: v.clone() for k, v in child.state_dict().items()}
    loaded, changed = load_across_latent_spaces(child, parent.state_dict(), "parent", FLUX)
    # (img_in's and cond_in's biases are [hidden] in both spaces: they carry over)
    assert sorted(changed) == [
        "cond_in.weight",
        "final_layer.linear.bias",
        "final_layer.linear.weight",
        "img_in.weight",
    ]
    after, before = child.state_dict(), parent.state_dict()
    for k, v in after.items():
        if k in changed:
            assert v.shape != before[k].shape
            torch.testing.assert_close(v, fresh[k], rtol=0, atol=0)  # kept the fresh init
        else:
            torch.testing.assert_close(v, before[k], rtol=0, atol=0)  # carried bitwise
    assert loaded.loaded - len(changed) == len(after) - 4


def test_a_mismatch_outside_the_latent_layers_is_still_an_error():
    cfg = typed([])
    small = MMDiT(cfg.model)
    other = MMDiT(typed(["model.hidden_size=64", "model.num_heads=2", "model.axes_dim=[8,12,12]"]).model)
    with pytest.raises(CheckpointError, match="outside the latent-space layers"):
        load_across_latent_spaces(small, other.state_dict(), "other", FLUX)


def test_a_lora_stage_cannot_switch_autoencoder():
    with pytest.raises(ConfigError, match=r"curriculum.stages.dcae.autoencoder: a LoRA stage cannot switch"):
        typed([*SWITCH, "curriculum.stages.dcae.lora.rank=4"])


def test_a_two_stage_curriculum_switching_to_the_dc_ae_reports_and_trains(shapes_dir, tmp_path):
    from opensora_lite.cli.curriculum import run

    overrides = [
        *SWITCH,
        f"data.shards={shapes_dir}",
        "data.aspect_ratios=[0.75,1.0,1.3333]",
        f"run.root={tmp_path}",
        "run.name=switch",
        "data.num_workers=0",
        "curriculum.stages.image.steps=2",
        "curriculum.stages.image.buckets={16px:{1:[1.0,8]}}",
        "curriculum.stages.image.evaluate=false",
        "curriculum.stages.dcae.steps=2",
        "curriculum.stages.dcae.log_every=1",
        "curriculum.stages.dcae.checkpoint_every=0",
        "curriculum.stages.dcae.buckets={32px:{8:[1.0,4]}}",
        "eval.repeats=1",
        "eval.i2v_clips=2",
        "sample.num_steps=2",
        "sample.batch_size=2",
        "sample.save_videos=1",
        "logger.progress_bar=false",
    ]
    results = run(compose(overrides))
    assert [r.name for r in results] == ["image", "dcae"]
    summary = json.loads((tmp_path / "switch" / "dcae" / "final" / "summary.json").read_text())
    init = summary["init"]
    assert init["reinitialised"] == ["final_layer.linear", "img_in"]
    assert init["autoencoder"] == {"from": "pixel", "to": "dc_ae", "from_patch": [1, 1, 1], "to_patch": [1, 1, 1]}
    from safetensors.torch import load_file

    parent = load_file(str(tmp_path / "switch" / "image" / "final" / "model.safetensors"))
    child = load_file(str(tmp_path / "switch" / "dcae" / "final" / "model.safetensors"))
    assert init["carried"] == len(parent) - 3 and child["img_in.weight"].shape == (128, 8)
    assert parent["img_in.weight"].shape == (128, 12)
    log = (tmp_path / "switch" / "logs" / "train.log").read_text()
    assert "autoencoder pixel -> dc_ae" in log and "re-initialised ['final_layer.linear', 'img_in']" in log
    # tokens per sample at the stage's own compression and patch: 8 frames -> 2 latent frames of (h/8) x (w/8)
    from opensora_lite.data.buckets import bucket_size

    sizes = [bucket_size(32, a, 8) for a in (0.75, 1.0, 1.3333)]
    allowed = {2 * (h // 8) * (w // 8) for h, w in sizes}
    records = [json.loads(x) for x in (tmp_path / "switch" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r.get("stage") == "dcae" and "tokens_per_s" in r]
    assert steps and all(round(r["tokens_per_s"] / r["samples_per_s"]) in allowed for r in steps)
    assert sorted(p.name for p in (tmp_path / "switch" / "dcae" / "samples").glob("*.mp4"))
