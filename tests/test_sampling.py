"""The full sampler: guidance rules, three-way guidance against a hand-computed combination, and the
conditioned tasks (i2v, v2v) through the pipeline with the tiny model and the pixel autoencoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import typed

from opensora_lite.autoencoders import build_autoencoder
from opensora_lite.cli.sample import SampleContext
from opensora_lite.diffusion import flow
from opensora_lite.diffusion.conditioning import applicable, build_condition, given_frames
from opensora_lite.diffusion.guidance import Guidance, image_ramp, oscillated
from opensora_lite.diffusion.pipeline import generate, guidance_of
from opensora_lite.diffusion.sampler import sample_latents
from opensora_lite.errors import ConfigError
from opensora_lite.models.flux.model import MMDiT
from opensora_lite.text.encoders import TextEncoders


@pytest.fixture(scope="module")
def ctx():
    cfg = typed(["sample.num_steps=3", "sample.batch_size=2", "sample.image_cfg_scale=null"])  # text CFG only
    return SampleContext(
        cfg,
        TextEncoders(cfg.text_encoder, torch.device("cpu")),
        build_autoencoder(cfg.autoencoder),
        torch.device("cpu"),
    )


@pytest.fixture(scope="module")
def model(ctx):
    """A tiny I2V model with random weights everywhere (zero-initialised parts would hide the condition)."""
    torch.manual_seed(0)
    m = MMDiT(ctx.cfg.model, image_condition=True)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.05)
    return m.eval()


def test_oscillation_and_ramp_values():
    assert [oscillated(5.0, i, warmup=2) for i in range(6)] == [5.0, 5.0, 5.0, 1.0, 5.0, 1.0]
    ramp = image_ramp(3.0, 2, 4, 5)  # step ceiling: linspace(3, 1, 5)[2] = 2
    assert torch.allclose(ramp, torch.tensor([1.0, 1.25, 1.5, 1.75, 2.0]))
    assert torch.equal(image_ramp(1.0, 0, 4, 3), torch.ones(3))


def test_three_way_guidance_matches_a_hand_computed_combination(ctx, model):
    """Three steps with oscillation (warmup 1) and the image ramp: every step's velocity is
    v_none + s_img * (v_empty - v_none) + s_txt * (v_text - v_empty), computed here by hand."""
    cfg = ctx.cfg
    t5, clip = ctx.text.encode(["a red circle moving left", "a blue square moving up"])
    e5, ec = ctx.text.empty()
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(2, cfg.model.latent_channels, 4, 8, 8, generator=g)
    head = torch.randn(2, cfg.model.latent_channels, 1, 8, 8, generator=g)
    cond = build_condition(["i2v_head", "i2v_loop"], head, head * 0.5, 4)
    s_txt, s_img, steps = 6.0, 2.5, 3
    guide = Guidance(s_txt, s_img, text_oscillation=True, image_oscillation=True, image_ramp=True, oscillation_warmup=1)
    got = sample_latents(
        model, noise, t5, clip, (e5, ec), cfg.flow, cfg.model.patch_size, steps, guide, cond, image_task=True
    )

    times = flow.sampling_schedule(cfg.flow, steps, 64, 4).tolist()
    x = noise
    with torch.no_grad():
        for i in range(steps):
            tt = torch.full((2,), times[i])
            v_text = model(x, tt, t5, clip, cond=cond)
            v_empty = model(x, tt, e5.expand_as(t5), ec.expand_as(clip), cond=cond)
            v_none = model(x, tt, e5.expand_as(t5), ec.expand_as(clip), cond=torch.zeros_like(cond))
            txt = s_txt if i == 0 or i % 2 == 0 else 1.0
            img = s_img if i == 0 or i % 2 == 0 else 1.0
            if img > 1:  # ceiling falls from s_img to 1 over the steps; frames rise from 1 to it
                ceiling = s_img + (1 - s_img) * i / steps
                img = torch.tensor([1 + (ceiling - 1) * f / 3 for f in range(4)]).view(1, 1, 4, 1, 1)
            v = v_none + img * (v_empty - v_none) + txt * (v_text - v_empty)
            x = x + (times[i + 1] - times[i]) * v
    mask = cond[:, :1] > 0
    assert torch.allclose(got, torch.where(mask, cond[:, 1:], x), atol=1e-5)
    assert torch.equal(got[:, :, :1], head)  # the reference written back into its frame
    # the third branch matters: text CFG alone (condition in both branches) gives another result
    plain = sample_latents(model, noise, t5, clip, (e5, ec), cfg.flow, cfg.model.patch_size, steps, s_txt, cond)
    assert (plain - got)[:, :, 1:].abs().max() > 1e-3


def test_v2v_condition_gives_the_first_or_last_k_latent_frames():
    video = torch.randn(2, 3, 6, 4, 4)
    cond = build_condition(["v2v_head", "v2v_tail"], video[:, :, :1], video[:, :, -1:], 6, video, v2v_frames=2)
    assert cond[0, 0, :, 0, 0].tolist() == [1, 1, 0, 0, 0, 0]
    assert cond[1, 0, :, 0, 0].tolist() == [0, 0, 0, 0, 1, 1]
    assert torch.equal(cond[0, 1:, :2], video[0, :, :2]) and not cond[0, 1:, 2:].any()
    assert torch.equal(cond[1, 1:, 4:], video[1, :, 4:]) and not cond[1, 1:, :4].any()
    assert given_frames("v2v_head", 3, 5) == [0, 1]  # at least one frame is generated
    # clips too short for v2v train the other tasks; without v2v weight the mix is unchanged
    assert applicable({"t2v": 1.0, "v2v_head": 2.0}, 2, 2) == {"t2v": 1.0}
    assert applicable({"t2v": 1.0, "v2v_tail": 2.0}, 5, 2) == {"t2v": 1.0, "v2v_tail": 2.0}
    assert applicable({"v2v_head": 1.0}, 2, 4) == {"t2v": 1.0}


def test_v2v_extends_a_video_from_its_first_and_last_frames(ctx, model):
    """v2v through the pipeline: the given frames of the reference come back exactly (pixel
    autoencoder), the rest is generated; a reference too short is one clear error."""
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (2, 5, 16, 16, 3), dtype=np.uint8)
    prompts = ["a red circle moving left", "a blue square moving up"]
    head = generate(ctx, model, prompts, (5, 16, 16), [3, 4], reference=ref, task="v2v_head", v2v_frames=2)
    tail = generate(ctx, model, prompts, (5, 16, 16), [3, 4], reference=ref, task="v2v_tail", v2v_frames=2)
    assert head.shape == (2, 5, 16, 16, 3)
    assert np.abs(head[:, :2].astype(int) - ref[:, :2]).max() <= 1
    assert np.abs(tail[:, 3:].astype(int) - ref[:, 3:]).max() <= 1
    assert np.abs(head[:, 2:].astype(int) - ref[:, 2:]).mean() > 10  # generated, not copied
    # the condition steers the result: the same seeds without it sample another video
    t2v = generate(ctx, model, prompts, (5, 16, 16), [3, 4])
    assert np.abs(head[:, 2:].astype(int) - t2v[:, 2:]).mean() > 1
    # per-sample seeds: a sample does not depend on its batch
    alone = generate(ctx, model, prompts[1:], (5, 16, 16), [4], reference=ref[1:], task="v2v_head", v2v_frames=2)
    assert np.array_equal(alone[0], head[1])
    with pytest.raises(ConfigError, match="reference: has 1 frames"):
        generate(ctx, model, prompts, (5, 16, 16), 0, reference=ref[:, :1], task="v2v_head", v2v_frames=2)


def test_motion_score_and_fps_reach_the_caption_through_the_template():
    from opensora_lite.diffusion.pipeline import template_captions

    template = "{caption} {fps:.0f} FPS, {motion_score:.1f} motion score."
    assert template_captions(["a cat"], template, fps=24, motion_score=4) == ["a cat 24 FPS, 4.0 motion score."]
    with pytest.raises(ConfigError, match="^motion_score: .*add motion_score="):
        template_captions(["a cat"], template, fps=24, motion_score=None)
    template = "data.caption_template='{caption} {motion_score} motion score.'"
    with pytest.raises(ConfigError, match="sample.motion_score"):  # refused at start, not at the first sample
        typed([template])
    typed([template, "sample.motion_score=4"])

    # Open-Sora 2.0's preset: sample.motion_score stands for the VMAF motion; images get the bare caption
    from types import SimpleNamespace

    from opensora_lite.train.evaluation import sample_captions

    rt = SimpleNamespace(cfg=typed(["caption=opensora2", "sample.motion_score=4", "data.target_fps=24"]))
    assert sample_captions(rt, ["a cat"], (33, 256, 256)) == ["a cat 24 FPS, 4 motion score."]
    assert sample_captions(rt, ["a cat"], (1, 256, 256)) == ["a cat"]
    rt.cfg.sample.motion_score = None
    with pytest.raises(ConfigError, match="^motion_score: .*add motion_score="):
        sample_captions(rt, ["a cat"], (33, 256, 256))


def test_sample_shape_takes_any_size_the_autoencoder_takes():
    """A resolution without a row in the stage's bucket table samples at that size with the largest
    resolution's frames (it was a KeyError); one below the autoencoder x patch step is one error line."""
    from types import SimpleNamespace

    from opensora_lite.train.evaluation import sample_shape

    def shape(*overrides: str, stage: str = "t2v", prefix: str = "sample.") -> tuple[int, int, int]:
        cfg = typed(list(overrides))  # the tiny curriculum: pixel autoencoder (factor 2) x patch 1
        keys = {} if prefix == "sample." else {"prefix": prefix}  # osl-sample names its own keys
        return sample_shape(SimpleNamespace(cfg=cfg), cfg.curriculum.stages[stage], **keys)

    assert shape() == (5, 16, 16)
    assert shape("sample.resolution=32px") == (5, 32, 32)  # the stage buckets 16px only: its 5 frames
    assert shape("sample.resolution=32px", "sample.num_frames=9") == (9, 32, 32)
    assert shape("sample.resolution=32px", stage="image") == (1, 32, 32)  # an image stage samples images
    assert shape("sample.resolution=33px", "sample.aspect_ratio=0.75") == (5, 28, 38)  # sides: multiples of 2
    with pytest.raises(ConfigError, match=r"^resolution: 1px is below the smallest size .* 2px"):
        shape("sample.resolution=1px", prefix="")
    with pytest.raises(ConfigError, match=r"^sample.resolution: '32' must look like '256px'$"):
        shape("sample.resolution=32")


def test_the_quickstart_samples_i2v_with_image_guidance(ctx, model):
    """With text guidance alone the quickstart's I2V samples left the reference's position in frame 1: the
    text branch pulls the shape to where clips with that prompt usually are (ref->frame-1 error 3.5 px at 24px
    against a 2.7 px step; python -m benchmarks.bench_i2v_position, docs/benchmarks.md). Its I2V samples use
    three-way guidance (text + image); its T2V samples keep two branches (no frame given: the third would equal
    the second)."""
    quickstart = SampleContext(typed(["sample.num_steps=2"]), ctx.text, ctx.ae, ctx.device)  # experiment=tiny_cpu
    assert guidance_of(quickstart.cfg.sample).image_scale == 3.0
    batches = []
    hook = model.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        ref = np.zeros((1, 16, 16, 3), np.uint8)
        generate(quickstart, model, ["a fast red circle moving left"], (5, 16, 16), 0, reference=ref)
        i2v, batches[:] = list(batches), []
        generate(quickstart, model, ["a fast red circle moving left"], (5, 16, 16), 0)
    finally:
        hook.remove()
    assert i2v == [3, 3] and batches == [2, 2]  # a batch of one: three branches for I2V, two for T2V
