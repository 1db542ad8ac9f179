"""Audio autoencoders behind one interface (autoencoders/audio.py): our small log-mel autoencoder and
LTX-2's audio VAE (diffusers' AutoencoderKLLTX2Audio, tiny and random, written to a local folder and
loaded from it) with the documented shapes and latent rate; LTX-2's per-feature normalisation against a
hand-packed computation, from its weights and from a stats file; its vocoder; the small autoencoder
trained in an autoencoder stage from a config (its loss goes down) and resumed exactly; the latent
cache's audio latents against encoding on the fly."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import compose, typed
from safetensors.torch import load_file, save_file

from opensora_lite.autoencoders.audio import build_audio_autoencoder, build_vocoder
from opensora_lite.autoencoders.ltx2_audio import LTX2AudioVAE, random_audio_vae, random_vocoder
from opensora_lite.config.schema import AudioAutoencoderConfig
from opensora_lite.errors import CheckpointError, ConfigError

SECOND = 16000  # samples of one second at the front end's rate: 101 log-mel frames, 26 latent frames


def _wave(batch: int = 2, samples: int = SECOND, seed: int = 0) -> torch.Tensor:
    """Two tones (one per channel) and a click: something with structure in time and mel."""
    t = torch.arange(samples) / 16000.0
    wave = torch.stack([0.25 * torch.sin(2 * torch.pi * 261.6 * t), 0.25 * torch.sin(2 * torch.pi * 587.3 * t)])
    wave[:, samples // 2 : samples // 2 + 80] += 0.5
    g = torch.Generator().manual_seed(seed)
    return (wave + 0.01 * torch.randn(batch, 2, samples, generator=g)).clamp(-1, 1)


def test_the_small_autoencoder_encodes_and_decodes_with_the_documented_shapes():
    torch.manual_seed(0)
    cfg = typed(["audio_autoencoder.mel.griffin_lim_iters=2"]).audio_autoencoder  # mel_ae_tiny, the default
    ae = build_audio_autoencoder(cfg).eval()
    assert (cfg.kind, ae.latents_per_second) == ("mel_ae", 25.0)
    wave = _wave()
    z = ae.encode(wave)
    assert z.shape == (2, 8, 26, 16) and ae.latent_shape(SECOND) == (8, 26, 16)
    assert torch.equal(ae.encode(ae.logmel(wave)), z)  # a waveform or its log-mel
    assert torch.allclose(ae.encode(wave[1:]), z[1:], atol=1e-5)  # a clip's latents do not depend on its batch
    assert ae.decode(z).shape == (2, 2, 104, 64) and ae.decode(z, mel_frames=101).shape == (2, 2, 101, 64)
    with pytest.raises(ValueError, match="not 105"):
        ae.decode(z, mel_frames=105)
    assert ae.encode(wave[:, :, :0]).shape == (2, 8, 0, 16)  # an image's window: no sound, no latent frames
    recon, raw = ae.reconstruct(ae.logmel(wave))
    assert recon.shape == (2, 2, 101, 64) and raw.shape == (2, 8, 26, 16)
    vocoder = build_vocoder(cfg)  # Griffin-Lim at the front end's rate
    assert vocoder.sample_rate == 16000 and vocoder(ae.decode(z[:1, :, :7], 25)).shape == (1, 2, 24 * 160)


@pytest.fixture(scope="module")
def ltx2_folders(tmp_path_factory) -> tuple[Path, Path, torch.Tensor, torch.Tensor]:
    """A tiny random LTX-2 audio VAE with non-trivial latent statistics, and a tiny vocoder, saved as
    diffusers folders (what a real download holds)."""
    root = tmp_path_factory.mktemp("ltx2")
    torch.manual_seed(1)
    vae = random_audio_vae(tiny=True)
    mean, std = torch.randn(32), torch.rand(32) + 0.5
    vae.latents_mean.copy_(mean)
    vae.latents_std.copy_(std)
    vae.save_pretrained(root / "audio_vae")
    random_vocoder(tiny=True).save_pretrained(root / "vocoder")
    return root / "audio_vae", root / "vocoder", mean, std


def _ltx2_cfg(path, **changes) -> AudioAutoencoderConfig:
    return typed(["audio_autoencoder=ltx2", f"audio_autoencoder.path={path}", "audio_autoencoder.latent_channels=2",
                  *(f"audio_autoencoder.{k}={v}" for k, v in changes.items())]).audio_autoencoder  # fmt: skip


def test_the_ltx2_audio_vae_loads_from_a_local_folder_and_normalises_per_feature(ltx2_folders, tmp_path):
    folder, _, mean, std = ltx2_folders
    ae = build_audio_autoencoder(_ltx2_cfg(folder))
    assert isinstance(ae, LTX2AudioVAE) and ae.latents_per_second == 25.0
    wave = _wave(batch=1, samples=3840)  # 0.24 s: 25 log-mel frames, 7 latent frames
    latents = ae.encode(wave, sample=False)
    assert latents.shape == (1, 2, 7, 16) and ae.latent_shape(SECOND) == (2, 26, 16)
    # by hand, as LTX-2's pipeline does it: pack [B, C, T, F] -> [B, T, C * F], normalise the 32 features, unpack
    raw = ae.vae.encode(ae.logmel(wave)).latent_dist.mode()
    packed = (raw.transpose(1, 2).flatten(2) - mean) / std
    assert torch.allclose(latents, packed.unflatten(2, (2, 16)).transpose(1, 2), atol=1e-6)
    assert torch.allclose(ae.denormalize(latents), raw, atol=1e-5)  # the round trip
    assert torch.allclose(ae.decode(latents), ae.vae.decode(raw).sample, atol=1e-4)
    assert ae.decode(latents).shape == (1, 2, 25, 64)  # causal: 1 + 4k frames <-> 1 + k latent frames
    # a posterior draw follows its generator
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(ae.encode(wave, generator=g()), ae.encode(wave, generator=g()))
    assert not torch.equal(ae.encode(wave, generator=g()), latents)
    # a stats file replaces the weights' statistics: one value per channel here
    save_file({"latents_mean": torch.tensor([1.0, -1.0]), "latents_std": torch.tensor([2.0, 4.0])},
              str(tmp_path / "stats.safetensors"))  # fmt: skip
    other = build_audio_autoencoder(_ltx2_cfg(folder, stats_path=tmp_path / "stats.safetensors"))
    want = (raw - torch.tensor([1.0, -1.0]).view(1, 2, 1, 1)) / torch.tensor([2.0, 4.0]).view(1, 2, 1, 1)
    assert torch.allclose(other.encode(wave, sample=False), want, atol=1e-6)


def test_ltx2_audio_problems_are_one_clear_error_line(ltx2_folders, tmp_path):
    folder, vocoder_folder, _, _ = ltx2_folders
    with pytest.raises(ConfigError) as info:
        typed(["audio_autoencoder=ltx2"])
    assert info.value.key == "audio_autoencoder.path"
    for path, words in ((tmp_path / "nowhere", "does not exist"), (tmp_path, "not a diffusers folder")):
        with pytest.raises(CheckpointError) as err:
            build_audio_autoencoder(_ltx2_cfg(path))
        assert "audio_autoencoder.path" in str(err.value) and words in str(err.value)
        assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match=r"audio_autoencoder.mel.n_mels: .* takes 64"):
        build_audio_autoencoder(_ltx2_cfg(folder, **{"mel.n_mels": 32}))
    with pytest.raises(CheckpointError, match="audio_autoencoder.latent_channels"):
        LTX2AudioVAE(AudioAutoencoderConfig(kind="ltx2_audio", path=str(folder)))  # 8 channels said, 2 there
    # the vocoder, for listening: LTX-2's log-mel at 100 frames a second -> 24 kHz
    cfg = _ltx2_cfg(folder, **{"vocoder.kind": "ltx2", "vocoder.path": vocoder_folder})
    vocoder = build_vocoder(cfg)
    mel = build_audio_autoencoder(cfg).logmel(_wave(batch=1, samples=3840))
    wave = vocoder(mel)
    assert vocoder.sample_rate == 24000 and wave.shape[:2] == (1, 2) and abs(wave.shape[2] - 25 * 240) <= 16
    with pytest.raises(CheckpointError, match="audio_autoencoder.vocoder.path"):
        build_vocoder(_ltx2_cfg(folder, **{"vocoder.kind": "ltx2", "vocoder.path": tmp_path / "none"}))


@pytest.mark.parametrize(
    "override, key",
    [
        ("data=shapes", "data.audio.enabled"),  # no sound to train on
        (
            "curriculum.stages.audio_ae.reconstruction.disc_weight=0.5",
            "curriculum.stages.audio_ae.reconstruction.disc_weight",
        ),
        (
            "curriculum.stages.audio_ae.reconstruction.modality=sound",
            "curriculum.stages.audio_ae.reconstruction.modality",
        ),
        ("audio_autoencoder=ltx2", "audio_autoencoder.path"),  # frozen, and without weights
    ],
)
def test_an_audio_autoencoder_stage_that_cannot_run_is_one_config_error(override, key):
    with pytest.raises(ConfigError) as info:
        typed(["experiment=tiny_audio_autoencoder", override])
    assert info.value.key == key


def _stage_overrides(data: Path, root: Path) -> list[str]:
    s = "curriculum.stages.audio_ae"
    return ["experiment=tiny_audio_autoencoder", f"data.shards={data}", "data.aspect_ratios=[1.0]",
            "data.num_workers=0", f"run.root={root}", "run.name=job", "logger.progress_bar=false",
            "eval.val_batches=1", "audio_autoencoder.mel.griffin_lim_iters=2",
            "audio_autoencoder.mel_ae.widths=[8,16,16]", f"{s}.steps=4", f"{s}.log_every=1", f"{s}.checkpoint_every=2",
            f"{s}.optim.warmup_steps=0", f"{s}.optim.lr=3e-3", f"{s}.buckets={{16px:{{8:[1.0,4]}}}}"]  # fmt: skip


def test_the_small_autoencoder_trains_in_an_autoencoder_stage_and_resumes_exactly(av_clips, tmp_path):
    from opensora_lite.cli.curriculum import run

    def losses(run_dir: Path) -> dict[int, float]:
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows if "loss" in r and "event" not in r}

    run(compose(_stage_overrides(av_clips, tmp_path / "ref")))
    stage = tmp_path / "ref" / "job" / "audio_ae"
    ref = losses(tmp_path / "ref" / "job")
    assert sorted(ref) == list(range(1, 5)) and ref[4] < 0.8 * ref[1], ref  # it learns
    summary = json.loads((stage / "final" / "summary.json").read_text())["metrics"]
    assert summary["mel_l1"] > 0 and summary["mel_psnr"] > 0 and summary["latent_std"] > 0
    for name in ("reconstruction.png", "reconstruction.wav"):
        assert (stage / "samples" / name).is_file(), name
    # its weights load as audio_autoencoder.path
    weights = stage / "final" / "model.safetensors"
    ae = build_audio_autoencoder(
        typed([f"audio_autoencoder.path={weights}", "audio_autoencoder.mel_ae.widths=[8,16,16]"]).audio_autoencoder
    )
    assert all(torch.equal(v, ae.state_dict()[k]) for k, v in load_file(weights).items())

    # a job stopped after step 2's checkpoint (its later checkpoints and final weights gone) resumes exactly
    shutil.copytree(tmp_path / "ref", tmp_path / "resumed")
    cut = tmp_path / "resumed" / "job" / "audio_ae"
    shutil.rmtree(cut / "final")
    assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["step_00000002"]
    run(compose([*_stage_overrides(av_clips, tmp_path / "resumed"), "curriculum.stages.audio_ae.evaluate=false"]))
    assert losses(tmp_path / "resumed" / "job") == ref
    want, got = (
        load_file(d / "job" / "audio_ae" / "final" / "model.safetensors")
        for d in (tmp_path / "ref", tmp_path / "resumed")
    )
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_the_cache_holds_audio_latents_equal_to_encoding_on_the_fly(av_clips, tmp_path):
    from opensora_lite.autoencoders import build_autoencoder
    from opensora_lite.data.audio import front_end_input
    from opensora_lite.data.cache import (
        CachedStream,
        bucket_table,
        build_cache,
        cached_shards,
        item_generator,
        stage_seed,
    )
    from opensora_lite.data.loader import BucketedVideoStream, expand_shards, frames_on_device
    from opensora_lite.parallel import build_engine
    from opensora_lite.text.encoders import TextEncoders

    cache, buckets = tmp_path / "cache", "curriculum.stages.t2v.buckets={16px:{5:[1.0,4]}}"
    cfg = typed(["data=shapes_av", "data.kind=cached", f"data.shards={av_clips}", "data.aspect_ratios=[1.0]",
                 f"data.cache_dir={cache}", buckets])  # fmt: skip
    torch.manual_seed(0)
    ae, text = build_autoencoder(cfg.autoencoder), TextEncoders(cfg.text_encoder)
    audio_ae = build_audio_autoencoder(cfg.audio_autoencoder).eval()
    engine = build_engine(cfg.parallel, "cpu")
    folder = build_cache(cfg, "t2v", False, ae, text, engine, progress=False, audio_ae=audio_ae)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["audio"]["autoencoder"]["kind"] == "mel_ae"

    stage = cfg.curriculum.stages["t2v"]
    index = list(cfg.curriculum.stages).index("t2v")
    reader = CachedStream(cached_shards(folder), bucket_table(cfg, stage), cfg.data.target_fps, seed=0)
    read = [item for url in reader.urls for item in reader.items(url, 0, Counter())]
    cached = {item.key: dict(item.frames) for item in read}
    stream = BucketedVideoStream(expand_shards(cfg.data.shards), bucket_table(cfg, stage), cfg.data.target_fps,
                                 seed=stage_seed(cfg, index), audio=cfg.data.audio)  # fmt: skip
    seen = 0
    for url in stream.urls:
        for item in stream.items(url, 0, Counter()):
            batch = BucketedVideoStream.collate([item], Counter(), [])
            sound, context = front_end_input(batch)  # the window with its context, as training encodes it
            assert context == cfg.data.audio.context == 512
            gen = item_generator(stage_seed(cfg, index), f"{item.key}/audio")
            want = audio_ae.encode(sound, generator=gen, context=context)
            got = cached[item.key]
            assert got["audio_x0"].shape == (8, 16, 16)  # 5 frames at 8 fps: 10000 samples, 63 log-mel frames
            assert torch.equal(got["audio_x0"], want[0]) and bool(got["has_audio"])
            assert torch.equal(got["x0"], ae.encode(frames_on_device(batch["video"], "cpu"))[0])  # beside, as before
            seen += 1
    assert seen == len(cached) == manifest["samples"] > 0
    batch = CachedStream.collate(read[:3], Counter(), [])  # a training batch from the cache
    assert batch["audio_x0"].shape == (3, 8, 16, 16) and batch["audio_frames"].tolist() == [16, 16, 16]
    assert batch["has_audio"].tolist() == [True] * 3
