"""Autoencoders, text encoders, weight loading: the pieces a stage is built from."""

import pytest
import torch
from conftest import tiny_mmdit

from opensora_lite.autoencoders.base import Autoencoder
from opensora_lite.autoencoders.pixel import PixelSpaceToDepth
from opensora_lite.config.schema import AutoencoderConfig, TextEncoderConfig, TextModelConfig
from opensora_lite.errors import CheckpointError
from opensora_lite.models.flux_weights import load_into
from opensora_lite.models.mmdit import MMDiT
from opensora_lite.text.encoders import TextEncoders

TINY_TEXT = TextEncoderConfig(
    t5=TextModelConfig(
        tiny={"vocab_size": 384, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_heads": 4},
        max_length=24,
        dim=32,
        dtype="fp32",
    ),
    clip=TextModelConfig(
        tiny={
            "vocab_size": 384,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "max_position_embeddings": 32,
        },
        max_length=24,
        dim=32,
        dtype="fp32",
    ),
)


def test_pixel_autoencoder_is_lossless_and_follows_the_interface():
    ae = PixelSpaceToDepth(2)
    video = torch.rand(2, 3, 5, 8, 12) * 2 - 1
    z = ae.encode(video)
    assert z.shape == (2, 12, 5, 4, 6) and torch.equal(ae.decode(z), video)
    assert ae.latent_frames(5) == 5 and ae.valid_num_frames(1)


class _Causal(Autoencoder):
    latent_channels, spatial_factor, temporal_factor, causal = 16, 8, 4, True

    def encode(self, video):  # pragma: no cover - only the frame arithmetic is tested
        raise NotImplementedError

    def decode(self, latents):  # pragma: no cover
        raise NotImplementedError


def test_causal_frame_rules():
    ae = _Causal()
    assert [ae.valid_num_frames(n) for n in (1, 5, 33, 32, 129)] == [True, True, True, False, True]
    assert ae.latent_frames(33) == 9 and ae.latent_frames(1) == 1
    with pytest.raises(ValueError):
        ae.latent_frames(32)


def test_hunyuan_vae_wrapper_on_a_tiny_diffusers_model():
    from diffusers import AutoencoderKLHunyuanVideo

    from opensora_lite.autoencoders.diffusers_vae import DiffusersVideoVAE

    torch.manual_seed(0)
    tiny = AutoencoderKLHunyuanVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 3,
        up_block_types=("HunyuanVideoUpBlock3D",) * 3,
        block_out_channels=(8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        spatial_compression_ratio=4,
        temporal_compression_ratio=4,
        mid_block_add_attention=False,
    )
    cfg = AutoencoderConfig(
        kind="hunyuan",
        latent_channels=4,
        spatial_factor=4,
        temporal_factor=4,
        causal=True,
        scaling_factor=0.476986,
        dtype="fp32",
    )
    ae = DiffusersVideoVAE(cfg, vae=tiny)
    z = ae.encode(torch.rand(1, 3, 5, 16, 16) * 2 - 1)
    assert z.shape == (1, 4, 2, 4, 4) and ae.latent_frames(5) == 2  # causal 4x: 1 + 4k frames -> 1 + k
    assert ae.decode(z).shape == (1, 3, 5, 16, 16)


def test_tiny_text_encoders_are_identical_across_builds_and_frozen():
    a, b = TextEncoders(TINY_TEXT), TextEncoders(TINY_TEXT)
    texts = ["a fast red circle moving left", "a slow blue square moving up"]
    (ta, ca), (tb, cb) = a.encode(texts), b.encode(texts)
    assert ta.shape == (2, 24, 32) and ca.shape == (2, 32)
    assert torch.equal(ta, tb) and torch.equal(ca, cb)
    assert not torch.allclose(ta[0], ta[1])  # the text matters
    assert all(not p.requires_grad for p in a.parameters())
    empty = a.empty()
    assert empty is a.empty() and torch.equal(empty[0], a.encode([""])[0])


def test_weight_loading_reports_and_rejects_what_does_not_fit():
    cfg = tiny_mmdit()
    src = MMDiT(tiny_mmdit(guidance_embed=True))
    dst = MMDiT(cfg, image_condition=True)
    report = load_into(dst, {k: v.to(torch.bfloat16) for k, v in src.state_dict().items()}, "flux.safetensors")
    assert report.missing == ["cond_in.weight", "cond_in.bias"]
    assert sorted(report.unexpected) == sorted(k for k in src.state_dict() if k.startswith("guidance_in"))
    assert dst.img_in.weight.dtype == torch.float32 and torch.equal(
        dst.img_in.weight, src.img_in.weight.bfloat16().float()
    )
    wrong = MMDiT(tiny_mmdit(hidden_size=72, num_heads=3))
    with pytest.raises(CheckpointError, match="do not fit the model"):
        load_into(wrong, src.state_dict(), "flux.safetensors")
    partial = {k: v for k, v in src.state_dict().items() if not k.startswith("single_blocks")}
    with pytest.raises(CheckpointError, match="missing from the checkpoint"):
        load_into(MMDiT(cfg), partial, "flux.safetensors")


def test_tiny_encoders_keep_the_caption_readable():
    """The tiny curriculum learns colour and motion only if the frozen random encoders keep those
    words: a nearest-centroid read-out of the CLIP pooled vector and of the T5 token sequence must
    recover the direction (chance 0.25) and the colour (chance 0.17) of held-out captions. (A random
    64-wide 2-layer CLIP read 0.44 for direction with this seed: the model then barely learned motion.)"""
    import itertools

    from conftest import typed

    from opensora_lite.data.synthetic import COLOURS, DIRECTIONS, SHAPES, caption_for

    enc = TextEncoders(typed().text_encoder)
    combos = list(itertools.product(COLOURS, SHAPES, DIRECTIONS, ["slow", "fast"]))
    t5, clip = enc.encode([caption_for(*c) for c in combos])

    def readout(x, label_of):
        labels = torch.tensor([label_of(c) for c in combos])
        x = torch.nn.functional.normalize(x - x.mean(0), dim=1)
        train, test = torch.arange(len(x)) % 2 == 0, torch.arange(len(x)) % 2 == 1
        centroids = torch.stack([x[train & (labels == k)].mean(0) for k in range(int(labels.max()) + 1)])
        return float(((x[test] @ centroids.T).argmax(1) == labels[test]).float().mean())

    direction = lambda c: list(DIRECTIONS).index(c[2])  # noqa: E731
    colour = lambda c: list(COLOURS).index(c[0])  # noqa: E731
    assert readout(clip, direction) >= 0.8 and readout(clip, colour) >= 0.8
    assert readout(t5.flatten(1), direction) >= 0.7 and readout(t5.flatten(1), colour) >= 0.7


def test_caption_memo_returns_what_encoding_returns_and_stays_bounded():
    from dataclasses import replace

    plain = TextEncoders(TINY_TEXT)
    memo = TextEncoders(replace(TINY_TEXT, cache_size=3))
    texts = ["a", "b", "a", "c", "d", "b"]
    for batch in (texts[:3], texts[3:], texts):
        got, want = memo.encode(batch), plain.encode(batch)
        assert torch.allclose(got[0], want[0], atol=1e-6) and torch.allclose(got[1], want[1], atol=1e-6)
    assert len(memo._memo) == 3
