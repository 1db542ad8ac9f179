"""Sampling with sound (docs/audio-video.md): both streams through the spec's forward_av with separate
video and audio guidance, a given video kept clean (v2a), and the real outputs of a tiny audio_video
run: its end-of-stage evaluation with sound and its audio figures, the mp4s with an AAC track (read
back by PyAV, also the copies W&B logged), and `osl-sample` v2a from its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import compose, tiny_mmdit
from PIL import Image

from opensora_lite.config.schema import FlowConfig
from opensora_lite.diffusion.av import Flags
from opensora_lite.diffusion.guidance import Guidance
from opensora_lite.diffusion.sampler import sample_av_latents
from opensora_lite.errors import ConfigError
from opensora_lite.eval.contact_sheet import layout_for
from opensora_lite.models.flux import SPEC
from opensora_lite.models.flux.audio import AudioStreamConfig
from opensora_lite.models.flux.model import MMDiT

FPS, FRAMES = 8.0, 5  # the run's clips: 5 frames at 8 fps, 0.625 s, 10000 samples at 16 kHz


def test_each_stream_gets_its_own_guidance_scale_and_a_given_video_stays_clean():
    torch.manual_seed(0)
    model = MMDiT(tiny_mmdit(attention_backend="math", audio=AudioStreamConfig(8, 4, 25.0, 32, 2)))
    with torch.no_grad():
        for p in model.parameters():  # nothing at zero: the audio output and the a2v gate too
            p.normal_(0, 0.1)
    g = torch.Generator().manual_seed(1)
    x, a = torch.randn(2, 4, 3, 4, 4, generator=g), torch.randn(2, 8, 10, 4, generator=g)
    txt, y = torch.randn(2, 5, 16, generator=g), torch.randn(2, 8, generator=g)
    empty = (torch.zeros(1, 5, 16), torch.zeros(1, 8))
    cfg, steps, s_video, s_audio = FlowConfig(), 2, 4.0, 1.5

    def forward_av(x, t, a, ta, t5, clip, cond):
        return SPEC.forward_av(model, x, t, a, ta, t5, clip, 7.5, cond)

    guide = Guidance(text_scale=s_video, audio_scale=s_audio)
    got_x, got_a = sample_av_latents(
        forward_av, x, a, Flags.of(["t2av"] * 2), txt, y, empty, cfg, [1, 2, 2], steps, guide
    )
    v_times = flow_times(cfg, steps)
    a_times = torch.linspace(1, 0, steps + 1).tolist()  # the audio's: unshifted, as trained
    hx, ha = x, a
    with torch.no_grad():
        for i in range(steps):
            tv, ta = torch.full((2,), v_times[i]), torch.full((2,), a_times[i])
            vt, at = forward_av(hx, tv, ha, ta, txt, y, None)
            ve, ae = forward_av(hx, tv, ha, ta, empty[0].expand_as(txt), empty[1].expand_as(y), None)
            hx = hx + (v_times[i + 1] - v_times[i]) * (ve + s_video * (vt - ve))
            ha = ha + (a_times[i + 1] - a_times[i]) * (ae + s_audio * (at - ae))
    assert torch.allclose(got_x, hx, atol=1e-5) and torch.allclose(got_a, ha, atol=1e-5)
    one_scale = sample_av_latents(forward_av, x, a, Flags.of(["t2av"] * 2), txt, y, empty, cfg, [1, 2, 2], steps,
                                  Guidance(text_scale=s_video))[1]  # fmt: skip
    assert (one_scale - got_a).abs().max() > 1e-3  # the audio scale is the audio's own

    seen = []

    def watching(x, t, a, ta, t5, clip, cond):
        seen.append(t)
        return forward_av(x, t, a, ta, t5, clip, cond)

    kept, sound = sample_av_latents(watching, x, a, Flags.of(["v2a"] * 2), txt, y, empty, cfg, [1, 2, 2], steps, guide)
    assert torch.equal(kept, x) and all((t == 0).all() for t in seen)  # given: clean, at time 0
    assert not torch.allclose(sound, a)


def flow_times(cfg, steps):
    from opensora_lite.diffusion import flow

    return flow.sampling_schedule(cfg, steps, 4, 3).tolist()  # 2 x 2 tokens a latent frame, 3 frames


@pytest.fixture(scope="module")
def av_run(tmp_path_factory):
    """A one-step audio_video stage on real Shapes clips with sound, logged to W&B offline, evaluated with
    sound (two colours, two given videos): the run directory."""
    from omegaconf import open_dict

    from opensora_lite.cli.curriculum import run
    from opensora_lite.data.synthetic import ShapesConfig, write_shapes_shards

    root = tmp_path_factory.mktemp("av_run")
    shapes = ShapesConfig(num_clips=8, clips_per_shard=8, seed=2, bounce=0.5, sound=True, fps=[FPS], sizes=[[32, 32]])
    write_shapes_shards(root / "data", shapes, progress=False)
    cfg = compose(
        [
            "data=shapes_av",
            f"data.shards={root / 'data'}",
            "data.num_workers=0",
            f"run.root={root}",
            "run.name=av",
            "model=tiny_av",
            "audio_autoencoder.mel.n_fft=256",  # a 16-bin log-mel (LTX-2's 64 bins of a 1024-point FFT, cut
            "audio_autoencoder.mel.n_mels=16",  # down 16x for the vocoder's Griffin-Lim on a CPU)
            "audio_autoencoder.mel.f_max=4000",
            "audio_autoencoder.mel.griffin_lim_iters=4",
            "model.audio.latent_channels=8",  # mel_ae_tiny's latents: 8 channels x 16 / 4 bins
            "model.audio.latent_bins=4",
            "~curriculum.stages.image",
            "~curriculum.stages.i2v",
            "~curriculum.stages.hires",
            "curriculum.stages.t2v.kind=audio_video",
            "curriculum.stages.t2v.init=none",
            "curriculum.stages.t2v.steps=1",
            f"curriculum.stages.t2v.buckets={{16px:{{{FRAMES}:[1.0,2]}}}}",
            "eval.colours=[red,blue]",
            "eval.repeats=1",
            "eval.v2a_clips=2",
            "sample.num_steps=1",
            "sample.save_videos=2",
            "logger=wandb",
            "logger.wandb.mode=offline",
            "logger.progress_bar=false",
        ]
    )
    with open_dict(cfg):
        cfg.curriculum.stages.t2v.tasks = {"t2av": 1.0, "v2a": 1.0}
    results = run(cfg)
    return root / "av", results


def audio_of(path: Path) -> tuple[int, int, int, float]:
    """(sample rate, channels, decoded samples, video seconds) of an mp4, read back by PyAV."""
    with av.open(str(path)) as c:
        stream, video = c.streams.audio[0], c.streams.video[0]
        rate, channels = stream.rate, stream.codec_context.channels
        seconds = float(video.duration * video.time_base)
        samples = sum(f.samples for f in c.decode(audio=0))
    return rate, channels, samples, seconds


def test_the_audio_video_stage_evaluates_with_sound_and_reports_the_audio_figures(av_run):
    from opensora_lite.train.curriculum import format_results

    run_dir, results = av_run
    summary = json.loads((run_dir / "t2v" / "final" / "summary.json").read_text())["metrics"]
    for key in ("audio_pitch_acc", "v2a_pitch_acc", "v2a_click_rate", "colour_acc", "direction_acc"):
        assert isinstance(summary[key], float), key
    assert summary["num_clips"] == 8  # 2 colours x 4 directions, half asked to bounce
    table = format_results(results)
    assert "audio_pitch_acc" in table and "v2a_pitch_acc" in table  # the stage's printed table
    samples = sorted((run_dir / "t2v" / "samples").glob("*.mp4"))
    assert [p.name[:4] for p in samples] == ["t2av", "t2av", "v2a_", "v2a_"]
    for p in samples:
        rate, channels, n, seconds = audio_of(p)
        assert (rate, channels) == (16000, 2) and seconds == FRAMES / FPS
        assert abs(n - 10000) <= 1024  # the clip's 0.625 s, to within an AAC frame
    assert sum(sum(row.values()) for row in summary["direction_confusion"].values()) == 4  # the straight ones
    clip = np.zeros((FRAMES, 16, 16, 3), np.uint8)
    for kind, rows in (("t2av", 8), ("v2a", 2)):  # a spectrogram strip under each clip's frames
        with Image.open(run_dir / "t2v" / f"contact_sheet_{kind}.png") as sheet:
            assert sheet.size[::-1] == layout_for([clip] * rows, sound=True).size
    logged = sorted((run_dir / "wandb").glob("offline-run-*/files/media/videos/**/*.mp4"))
    assert len(logged) == 4 and all(audio_of(p)[:2] == (16000, 2) for p in logged)  # W&B's copies have the sound
    assert {p.read_bytes() for p in logged} == {p.read_bytes() for p in samples}


def _sample(run_dir: Path, out: Path, *overrides: str):
    from opensora_lite.cli.sample import sample

    return sample(compose([f"checkpoint={run_dir / 't2v'}", f"out={out}", "num_steps=1", *overrides], "sample"))


def test_osl_sample_v2a_writes_the_given_frames_with_generated_sound(av_run, tmp_path):
    from opensora_lite.data.video import encode_mp4
    from opensora_lite.diffusion.sampling import read_frames
    from opensora_lite.eval.shapes_audio import bounce_clip

    run_dir, _ = av_run
    given = tmp_path / "given.mp4"
    given.write_bytes(encode_mp4(bounce_clip("blue", "square", "right", 8, 16, 16, 3), FPS))
    prompt = "prompts=[a fast blue square bouncing off the right edge]"
    out = _sample(run_dir, tmp_path / "v2a", f"video={given}", prompt, "cfg_scale=3", "audio_cfg_scale=2")
    record = json.loads((out / "samples.json").read_text())
    assert record["task"] == "v2a" and record["guidance"]["audio_scale"] == 2.0  # the default task with a video
    assert record["audio"] == {"sample_rate": 16000, "channels": 2, "samples": 10000}
    path = Path(record["samples"][0]["video"])
    rate, channels, n, seconds = audio_of(path)
    assert (rate, channels, seconds) == (16000, 2, FRAMES / FPS) and abs(n - 10000) <= 1024
    assert (out / "contact_sheet.png").is_file()
    with av.open(str(path)) as c:  # written 8x enlarged (nearest): every 8th pixel is a frame's pixel
        written = np.stack([f.to_ndarray(format="rgb24")[::8, ::8] for f in c.decode(video=0)])
    expected = read_frames(str(given), (16, 16), FPS)[:FRAMES]
    assert written.shape == expected.shape
    assert np.abs(written.astype(int) - expected).mean() < 4  # the given frames (to within mp4 coding)

    with pytest.raises(ConfigError, match="video"):
        _sample(run_dir, tmp_path / "missing", f"video={tmp_path / 'none.mp4'}")
    with pytest.raises(ConfigError, match="t2av, v2a"):
        _sample(run_dir, tmp_path / "i2v", "task=i2v_head", f"reference={given}")
