"""Autoencoders, text encoders, weight loading: the pieces a stage is built from."""

import shutil

import pytest
import torch
from conftest import tiny_mmdit

from opensora_lite.autoencoders.base import Autoencoder
from opensora_lite.autoencoders.pixel import PixelSpaceToDepth
from opensora_lite.config.schema import AutoencoderConfig, TextEncoderConfig, TextModelConfig
from opensora_lite.errors import CheckpointError
from opensora_lite.models.flux import SPEC as FLUX
from opensora_lite.models.flux.model import MMDiT
from opensora_lite.models.loading import load_into
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
    assert torch.equal(ae.decode(z, num_frames=5), video)
    with pytest.raises(ValueError, match="cannot decode 5 latent frames into 4 frames"):
        ae.decode(z, num_frames=4)
    assert torch.equal(ae.encode(video, sample=False), z)  # deterministic either way
    assert ae.latent_frames(5) == 5 and ae.valid_num_frames(1)
    with pytest.raises(ValueError, match="not divisible by the spatial factor 2"):
        ae.encode(video[..., :7, :])


class _Causal(Autoencoder):
    latent_channels, spatial_factor, temporal_factor, causal = 16, 8, 4, True

    def encode(self, video, sample=True, generator=None):  # pragma: no cover - only the frame arithmetic is tested
        raise NotImplementedError

    def decode(self, latents):  # pragma: no cover
        raise NotImplementedError


def test_causal_frame_rules():
    ae = _Causal()
    assert [ae.valid_num_frames(n) for n in (1, 5, 33, 32, 129)] == [True, True, True, False, True]
    assert ae.latent_frames(33) == 9 and ae.latent_frames(1) == 1
    with pytest.raises(ValueError, match=r"cannot encode 32 frames \(causal: 1 \+ 4k frames\)"):
        ae.latent_frames(32)


# Tiny diffusers video VAEs (4 latent channels, causal 4x in time) and the configs that describe them.
WAN_MEAN, WAN_STD = [0.3, -0.2, 0.1, 0.0], [0.5, 1.5, 2.0, 1.0]
_CAUSAL_4 = dict(latent_channels=4, temporal_factor=4, causal=True, dtype="fp32")
VAE_CFG = {
    "hunyuan": dict(kind="hunyuan", spatial_factor=4, scaling_factor=0.476986, shift_factor=0.1, **_CAUSAL_4),
    "wan": dict(kind="wan", spatial_factor=8, **_CAUSAL_4),
}


def tiny_vae(kind: str):
    from opensora_lite.autoencoders.diffusers_vae import random_vae

    torch.manual_seed(0)
    return random_vae(kind, tiny=True, **(dict(latents_mean=WAN_MEAN, latents_std=WAN_STD) if kind == "wan" else {}))


def wrap(kind: str, vae=None, **changes):
    from opensora_lite.autoencoders.diffusers_vae import DiffusersVideoVAE

    return DiffusersVideoVAE(AutoencoderConfig(**{**VAE_CFG[kind], **changes}), vae=vae)


@pytest.mark.parametrize("kind", ["hunyuan", "wan"])
def test_diffusers_vae_shapes_scaling_sampling_and_round_trip(kind):
    tiny = tiny_vae(kind)
    ae = wrap(kind, tiny)
    s = ae.spatial_factor
    video = torch.rand(1, 3, 5, 2 * s, 3 * s, generator=torch.Generator().manual_seed(0)) * 2 - 1

    z = ae.encode(video, sample=False)
    assert z.shape == (1, 4, 2, 2, 3) and z.dtype == torch.float32  # causal 4x: 1 + 4k frames -> 1 + k
    assert ae.encode(video[:, :, :1], sample=False).shape == (1, 4, 1, 2, 3)  # an image is one latent frame
    raw = tiny.encode(video).latent_dist.mode()
    if kind == "hunyuan":
        want = (raw - 0.1) * 0.476986
    else:
        want = (raw - torch.tensor(WAN_MEAN).view(1, 4, 1, 1, 1)) / torch.tensor(WAN_STD).view(1, 4, 1, 1, 1)
    torch.testing.assert_close(z, want)
    decoded = ae.decode(z)
    assert decoded.shape == video.shape and decoded.dtype == torch.float32
    torch.testing.assert_close(decoded, tiny.decode(raw).sample)  # decode undoes the scaling
    assert torch.equal(ae.decode(z, num_frames=5), decoded)  # causal: num_frames is only checked
    with pytest.raises(ValueError, match=r"cannot decode 2 latent frames into 9 frames \(causal: 1 \+ 4k"):
        ae.decode(z, num_frames=9)

    seeded = [ae.encode(video, generator=torch.Generator().manual_seed(1)) for _ in range(2)]
    free = ae.encode(video)  # the trainer's call: a posterior sample from the global RNG
    assert torch.equal(seeded[0], seeded[1]) and not torch.equal(seeded[0], z) and not torch.equal(free, seeded[0])
    assert free.shape == z.shape

    with pytest.raises(ValueError, match=r"cannot encode 6 frames \(causal: 1 \+ 4k frames\)"):
        ae.encode(torch.cat([video, video[:, :, :1]], dim=2))
    assert not any(p.requires_grad for p in ae.parameters())
    assert not ae.train().training and not any(m.training for m in ae.modules())  # frozen: always eval


@pytest.mark.parametrize("kind", ["hunyuan", "wan"])
def test_diffusers_vae_loads_from_a_local_folder_only(kind, tmp_path):
    from opensora_lite.autoencoders import build_autoencoder

    tiny = tiny_vae(kind)
    tiny.save_pretrained(tmp_path / "vae")
    video = torch.rand(1, 3, 5, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    loaded = build_autoencoder(AutoencoderConfig(**VAE_CFG[kind], path=str(tmp_path / "vae")))
    assert torch.equal(loaded.encode(video, sample=False), wrap(kind, tiny).encode(video, sample=False))

    half = build_autoencoder(AutoencoderConfig(**{**VAE_CFG[kind], "dtype": "bf16"}, path=str(tmp_path / "vae")))
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    z = half.encode(video)
    assert z.dtype == torch.float32 and half.decode(z).shape == video.shape and half.decode(z).dtype == torch.float32

    (tmp_path / "empty").mkdir()
    (tmp_path / "no_weights").mkdir()
    shutil.copy(tmp_path / "vae" / "config.json", tmp_path / "no_weights")
    (tmp_path / "file.safetensors").touch()
    for path, problem in [
        (tmp_path / "missing", "does not exist"),
        (None, "does not exist"),
        (tmp_path / "file.safetensors", "is a file"),
        (tmp_path / "empty", "has no config.json"),
        (tmp_path / "no_weights", "has no weights"),
    ]:
        cfg = AutoencoderConfig(**VAE_CFG[kind], path=None if path is None else str(path))
        with pytest.raises(CheckpointError, match=f"autoencoder.path: .*{problem}"):
            build_autoencoder(cfg)
    with pytest.raises(CheckpointError, match=r"has \(latent_channels, spatial_factor, temporal_factor\) \(4,"):
        build_autoencoder(AutoencoderConfig(**{**VAE_CFG[kind], "latent_channels": 16}, path=str(tmp_path / "vae")))


@pytest.mark.parametrize("kind", ["hunyuan", "wan"])
def test_vae_tiling_encodes_and_decodes_above_the_tile_size(kind):
    ae = wrap(kind, tiny_vae(kind), tiling=True)
    s = ae.spatial_factor
    tile, stride = 4 * s, 3 * s  # pixels; the frame below is 6 latents = two overlapping tiles each way
    ae.vae.enable_tiling(
        tile_sample_min_height=tile,
        tile_sample_min_width=tile,
        tile_sample_stride_height=stride,
        tile_sample_stride_width=stride,
    )
    seen = {"encoder": [], "decoder": []}
    for name in seen:
        getattr(ae.vae, name).register_forward_pre_hook(lambda m, args, n=name: seen[n].append(args[0].shape[-2:]))
    video = torch.rand(1, 3, 5, 6 * s, 6 * s, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = ae.encode(video, sample=False)
    assert ae.vae.use_tiling and z.shape == (1, 4, 2, 6, 6)
    assert ae.decode(z).shape == video.shape
    assert max(max(hw) for hw in seen["encoder"]) == tile and max(max(hw) for hw in seen["decoder"]) == 4


def test_decoder_offload_keeps_the_decoder_off_the_device():
    """Device moves skip the decoder (meta stands in for a GPU here); dtype changes reach it; decode runs."""
    ae = wrap("hunyuan", tiny_vae("hunyuan"))
    video = torch.rand(1, 3, 5, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = ae.encode(video, sample=False)
    want = ae.decode(z)
    decoder = {p for m in (ae.vae.decoder, ae.vae.post_quant_conv) for p in m.parameters()}
    assert all(p.device.type == "cpu" for p in ae.parameters())

    ae.to("meta").to(torch.float64)
    for p in ae.parameters():
        assert p.device.type == ("cpu" if p in decoder else "meta") and p.dtype == torch.float64
    got = ae.decode(z)  # the encoder sits on meta: decode uses the decoder parts only
    assert got.dtype == torch.float32 and torch.allclose(got, want, atol=1e-5)
    assert all(p.device.type == "cpu" for p in decoder) and not any(p.requires_grad for p in ae.parameters())

    kept = wrap("wan", tiny_vae("wan"), offload_decoder=False).to("meta")
    assert all(p.device.type == "meta" for p in kept.parameters())
    parked = wrap("wan", tiny_vae("wan")).to("meta")
    assert {p.device.type for p in parked.vae.decoder.parameters()} == {"cpu"} and parked.mean.is_meta
    assert {p.device.type for p in parked.vae.encoder.parameters()} == {"meta"}


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


def _tiny_clip_text_config():
    """A 48-wide, one-layer CLIP text config reading the byte tokenizer's ids (pad 0, eos 1)."""
    import transformers as tf

    return tf.CLIPTextConfig(
        vocab_size=384,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=1,
        num_attention_heads=4,
        max_position_embeddings=32,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=0,
    )


@pytest.fixture(scope="module")
def text_folders(tmp_path_factory):
    """A tiny T5 encoder and CLIP text model saved as transformers folders, each with a byte tokenizer."""
    import transformers as tf

    root = tmp_path_factory.mktemp("text")
    torch.manual_seed(0)
    t5 = tf.T5EncoderModel(tf.T5Config(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4))
    clip = tf.CLIPTextModel(_tiny_clip_text_config())
    for name, model in (("t5", t5), ("clip", clip)):
        model.save_pretrained(root / name)
        tf.ByT5Tokenizer().save_pretrained(root / name)
    return root, t5.eval(), clip.eval()


def local_text(root, dtype="fp32", **t5):
    return TextEncoderConfig(
        t5=TextModelConfig(path=str(root / "t5"), **{"max_length": 24, "dim": 32, "dtype": dtype, **t5}),
        clip=TextModelConfig(path=str(root / "clip"), max_length=12, dim=48, dtype=dtype),
    )


def test_text_encoders_load_from_local_folders(text_folders):
    import transformers as tf

    root, t5, clip = text_folders
    enc = TextEncoders(local_text(root))
    texts = ["a red circle moving left", "a red circle moving right"]  # equal in their first 20 bytes
    t5_out, clip_out = enc.encode(texts)
    assert t5_out.shape == (2, 24, 32) and clip_out.shape == (2, 48) and t5_out.dtype == clip_out.dtype == torch.float32
    ids = tf.ByT5Tokenizer()(texts, padding="max_length", max_length=24, truncation=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(t5_out, t5(input_ids=ids.input_ids).last_hidden_state, atol=1e-6)  # the saved weights
    assert not torch.allclose(t5_out[0], t5_out[1])  # T5 reads 24 bytes, CLIP 12: only T5 sees the direction
    assert torch.equal(clip_out[0], clip_out[1])
    assert not any(p.requires_grad for p in enc.parameters())
    assert TextEncoders(local_text(root, max_length=40)).encode(texts)[0].shape == (2, 40, 32)


def test_text_encoders_read_whole_t5_and_clip_checkpoints(tmp_path):
    """T5-v1.1-XXL and CLIP-L are published as the whole models (T5 encoder-decoder, CLIP text + vision):
    the encoders take the text encoder's weights out of such folders."""
    import transformers as tf

    torch.manual_seed(0)
    t5 = tf.T5ForConditionalGeneration(tf.T5Config(vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=1))
    text = _tiny_clip_text_config()
    vision = tf.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    clip = tf.CLIPModel(tf.CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=8))
    for name, model in (("t5", t5), ("clip", clip)):
        model.save_pretrained(tmp_path / name)
        tf.ByT5Tokenizer().save_pretrained(tmp_path / name)
    got = TextEncoders(local_text(tmp_path)).encode(["a red circle"])
    tokenize = tf.ByT5Tokenizer()
    ids = {
        n: tokenize(["a red circle"], padding="max_length", max_length=n, truncation=True).input_ids for n in (24, 12)
    }
    with torch.no_grad():
        want_t5 = t5.eval().encoder(input_ids=torch.tensor(ids[24])).last_hidden_state
        want_clip = clip.eval().text_model(input_ids=torch.tensor(ids[12])).pooler_output
    assert torch.allclose(got[0], want_t5, atol=1e-6) and torch.allclose(got[1], want_clip, atol=1e-6)


def test_text_encoders_honour_bf16_and_encode_native_keeps_it(text_folders):
    root, _, _ = text_folders
    enc = TextEncoders(local_text(root, dtype="bf16"))
    assert {p.dtype for p in enc.parameters()} == {torch.bfloat16}
    texts = ["a blue square", "a green star moving up"]
    native, plain = enc.encode_native(texts), enc.encode(texts)
    assert native[0].dtype == native[1].dtype == torch.bfloat16 and plain[0].dtype == plain[1].dtype == torch.float32
    assert torch.equal(native[0].float(), plain[0]) and torch.equal(native[1].float(), plain[1])


def test_text_encoder_paths_that_cannot_load_are_one_error(text_folders, tmp_path):
    root, _, _ = text_folders
    missing = local_text(root)
    missing.t5.path = str(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="text_encoder.t5.path: .* does not exist"):
        TextEncoders(missing)
    (tmp_path / "empty").mkdir()
    (tmp_path / "no_tokenizer").mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(root / "clip" / name, tmp_path / "no_tokenizer" / name)
    for folder, problem in (("empty", "has no config.json"), ("no_tokenizer", "cannot load from")):
        cfg = local_text(root)
        cfg.clip.path = str(tmp_path / folder)
        with pytest.raises(CheckpointError, match=f"text_encoder.clip.path: .*{problem}"):
            TextEncoders(cfg)
    with pytest.raises(CheckpointError, match="text_encoder.t5.dim: 64, but the model at .* outputs 32"):
        TextEncoders(local_text(root, dim=64))


def test_weight_loading_reports_and_rejects_what_does_not_fit():
    cfg = tiny_mmdit()
    src = MMDiT(tiny_mmdit(guidance_embed=True))
    dst = MMDiT(cfg, image_condition=True)
    report = load_into(
        dst, {k: v.to(torch.bfloat16) for k, v in src.state_dict().items()}, "flux.safetensors", FLUX.optional_keys()
    )
    assert report.missing == ["cond_in.weight", "cond_in.bias"]
    assert sorted(report.unexpected) == sorted(k for k in src.state_dict() if k.startswith("guidance_in"))
    assert dst.img_in.weight.dtype == torch.float32 and torch.equal(
        dst.img_in.weight, src.img_in.weight.bfloat16().float()
    )
    wrong = MMDiT(tiny_mmdit(hidden_size=72, num_heads=3))
    with pytest.raises(CheckpointError, match="do not fit the model"):
        load_into(wrong, src.state_dict(), "flux.safetensors", FLUX.optional_keys())
    partial = {k: v for k, v in src.state_dict().items() if not k.startswith("single_blocks")}
    with pytest.raises(CheckpointError, match="missing from the checkpoint"):
        load_into(MMDiT(cfg), partial, "flux.safetensors", FLUX.optional_keys())


def _shapes_captions():
    import itertools

    from opensora_lite.data.synthetic import COLOURS, DIRECTIONS, SHAPES, caption_for

    combos = list(itertools.product(COLOURS, SHAPES, DIRECTIONS, ["slow", "fast"]))
    labels = {
        "colour": [list(COLOURS).index(c[0]) for c in combos],
        "direction": [list(DIRECTIONS).index(c[2]) for c in combos],
    }
    return [caption_for(*c) for c in combos], {k: torch.tensor(v) for k, v in labels.items()}


def test_tiny_encoders_keep_the_caption_readable():
    """The tiny curriculum learns colour and motion only if the frozen random encoders keep those
    words: a nearest-centroid read-out of the CLIP pooled vector and of the T5 token sequence must
    recover the direction (chance 0.25) and the colour (chance 0.17) of held-out captions. (A random
    64-wide 2-layer CLIP read 0.44 for direction with this seed: the model then barely learned motion.)

    Readable is not enough: the direction must also be a large part of what the T5 tokens vary by. With
    the byte tokenizer it was 3% of their variance (colour 42%), and the tiny model stayed at chance for
    direction after 800 text-to-video steps; with whole-word tokens it is 26%, and the same probe reads
    0.71 at 400 steps and 1.0 at 600 (docs/tiny-curriculum.md)."""
    from conftest import typed

    enc = TextEncoders(typed().text_encoder)
    captions, labels = _shapes_captions()
    t5, clip = enc.encode(captions)

    def readout(x, labels):
        x = torch.nn.functional.normalize(x - x.mean(0), dim=1)
        train, test = torch.arange(len(x)) % 2 == 0, torch.arange(len(x)) % 2 == 1
        centroids = torch.stack([x[train & (labels == k)].mean(0) for k in range(int(labels.max()) + 1)])
        return float(((x[test] @ centroids.T).argmax(1) == labels[test]).float().mean())

    def variance_share(x, labels):  # the part of the variance that the label's class means explain
        x = x - x.mean(0)
        means = torch.stack([x[labels == k].mean(0) for k in range(int(labels.max()) + 1)])
        return float((means[labels] ** 2).sum() / (x**2).sum())

    assert readout(clip, labels["direction"]) >= 0.8 and readout(clip, labels["colour"]) >= 0.8
    t5 = t5.flatten(1)
    assert readout(t5, labels["direction"]) >= 0.7 and readout(t5, labels["colour"]) >= 0.7
    assert variance_share(t5, labels["direction"]) >= 0.15
    assert variance_share(clip, labels["direction"]) >= 0.15


def test_word_tokenizer_gives_each_shapes_word_its_own_token():
    """Whole-word ids: deterministic, eos then padding, truncation keeps the eos, and the tiny config's
    vocabulary has no hash collision among the words of Shapes captions (colliding words would read as
    the same word to the model)."""
    from conftest import typed

    from opensora_lite.text.encoders import WordTokenizer

    cfg = typed().text_encoder
    assert cfg.t5.tokenizer == cfg.clip.tokenizer == "words"
    tok = WordTokenizer(cfg.t5.tiny["vocab_size"])
    captions, _ = _shapes_captions()
    words = {w for c in captions for w in c.split()}
    assert len({tok.word_id(w) for w in words}) == len(words)
    ids = tok(["a fast red circle moving left", "Moving, left!"], max_length=8).input_ids
    left = tok.word_id("left")
    assert ids[0].tolist() == [tok.word_id(w) for w in "a fast red circle moving left".split()] + [1, 0]
    assert ids[1].tolist() == [tok.word_id("moving"), tok.word_id(","), left, tok.word_id("!"), 1, 0, 0, 0]
    assert tok(["one two three four five"], max_length=3).input_ids[0].tolist()[-1] == 1
    assert max(len(c.split()) for c in captions) < cfg.t5.max_length  # no caption loses its last words
    # every id fits the embedding table the tiny encoders are built with
    assert int(ids.max()) < cfg.t5.tiny["vocab_size"] and int(ids.max()) < cfg.clip.tiny["vocab_size"]


def test_caption_memo_returns_what_encoding_returns_and_stays_bounded():
    from dataclasses import replace

    plain = TextEncoders(TINY_TEXT)
    memo = TextEncoders(replace(TINY_TEXT, cache_size=3))
    texts = ["a", "b", "a", "c", "d", "b"]
    for batch in (texts[:3], texts[3:], texts):
        got, want = memo.encode(batch), plain.encode(batch)
        assert torch.allclose(got[0], want[0], atol=1e-6) and torch.allclose(got[1], want[1], atol=1e-6)
    assert len(memo._memo) == 3


def test_empty_prompt_embeddings_are_cached_with_the_run(mini_run, tmp_path):
    """The run directory keeps the empty prompt's embeddings (CFG dropout, unconditional branch); a later
    start reads them instead of encoding again, and only when the encoder settings are the same."""
    from dataclasses import replace

    from conftest import typed
    from safetensors.torch import load_file, save_file

    from opensora_lite.train.runtime import EMPTY_PROMPT_FILE

    run_dir, _ = mini_run
    cfg = typed([]).text_encoder  # the settings the run used
    saved = load_file(run_dir / EMPTY_PROMPT_FILE)
    fresh = TextEncoders(cfg).empty()
    assert torch.equal(saved["t5"], fresh[0]) and torch.equal(saved["clip"], fresh[1])
    path = tmp_path / EMPTY_PROMPT_FILE
    TextEncoders(cfg).keep_empty_with(path, write=True)
    marked = {"t5": torch.full_like(saved["t5"], 7.0), "clip": torch.full_like(saved["clip"], 7.0)}
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    save_file(marked, str(path), metadata=meta)
    reader = TextEncoders(cfg)
    reader.keep_empty_with(path, write=False)
    assert torch.equal(reader.empty()[0], marked["t5"])  # read from the run, not encoded again
    other = TextEncoders(replace(cfg, t5=replace(cfg.t5, max_length=cfg.t5.max_length + 1)))
    other.keep_empty_with(path, write=False)
    assert not torch.equal(other.empty()[0][:, :1], marked["t5"][:, :1])  # other settings: encoded afresh


def test_wan22_vae_config_fits_a_tiny_wan22_and_normalises_48_channels(tmp_path):
    """autoencoder=wan22: AutoencoderKLWan with patch 2 and residual blocks, 4x16x16 into 48 channels."""
    from tiny_vaes import WAN22_MEAN as mean
    from tiny_vaes import WAN22_STD as std
    from tiny_vaes import tiny_vae_folder

    from opensora_lite.autoencoders import build_autoencoder

    tiny, cfg = tiny_vae_folder("wan22", tmp_path / "vae")
    ae = build_autoencoder(cfg)
    video = torch.rand(1, 3, 5, 32, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = ae.encode(video, sample=False)
    assert z.shape == (1, 48, 2, 2, 3)
    raw = tiny.encode(video).latent_dist.mode()
    torch.testing.assert_close(
        z, (raw - torch.tensor(mean).view(1, -1, 1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1, 1)
    )
    assert ae.decode(z).shape == video.shape
    cfg.spatial_factor = 8  # the Wan 2.1 geometry does not fit these weights
    with pytest.raises(
        CheckpointError, match=r"has \(latent_channels, spatial_factor, temporal_factor\) \(48, 16, 4\)"
    ):
        build_autoencoder(cfg)


def test_ltx_vae_config_fits_a_tiny_ltx_and_uses_its_stored_statistics(tmp_path):
    """autoencoder=ltx: AutoencoderKLLTXVideo, causal 8x32x32 (1 + 8k frames), per-channel mean/std buffers."""
    from tiny_vaes import LTX_MEAN as mean
    from tiny_vaes import LTX_STD as std
    from tiny_vaes import tiny_vae_folder

    from opensora_lite.autoencoders import build_autoencoder

    tiny, cfg = tiny_vae_folder("ltx", tmp_path / "vae")
    cfg.scaling_factor = 2.0
    ae = build_autoencoder(cfg)
    assert ae.valid_num_frames(9) and not ae.valid_num_frames(5) and ae.latent_frames(17) == 3
    video = torch.rand(1, 3, 9, 64, 96, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = ae.encode(video, sample=False)
    assert z.shape == (1, 8, 2, 2, 3)
    raw = tiny.encode(video).latent_dist.mode()
    torch.testing.assert_close(z, (raw - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1) * 2.0)
    torch.testing.assert_close(ae.decode(z), tiny.decode(raw).sample)


def test_hunyuan15_vae_config_fits_a_tiny_hunyuan15(tmp_path):
    """autoencoder=hunyuan15: AutoencoderKLHunyuanVideo15, causal 4x16x16, z * scaling_factor."""
    from tiny_vaes import tiny_vae_folder

    from opensora_lite.autoencoders import build_autoencoder

    tiny, cfg = tiny_vae_folder("hunyuan15", tmp_path / "vae")
    ae = build_autoencoder(cfg)
    video = torch.rand(1, 3, 5, 32, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = ae.encode(video, sample=False)
    assert z.shape == (1, 8, 2, 2, 3) and ae.valid_num_frames(5) and not ae.valid_num_frames(4)
    raw = tiny.encode(video).latent_dist.mode()
    torch.testing.assert_close(z, raw * 1.03682)
    torch.testing.assert_close(ae.decode(z), tiny.decode(raw).sample)
