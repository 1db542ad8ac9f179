"""The MMDiT's audio stream and the audio-video objective (docs/audio-video.md): a video checkpoint with
the audio stream added computes the same video, both streams share a time line in seconds, the FLOPs
count the audio tokens, per-modality flags keep a given modality clean and out of the loss, the balance
normalises each loss, and a few steps of joint training bring both losses down.

The "audio latents" here are a fixed space-to-depth of the log-mel of a tone (MelSpaceToDepth; the audio
autoencoders are built elsewhere): [B, 32, T_mel / 4, 4] at 25 latent frames a second, LTX-2's token size.
The stage test runs on the real mel_ae_tiny (random weights), whose 8 x 16 latents model=tiny_av takes.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_mmdit
from torch.utils.flop_counter import FlopCounterMode

from opensora_lite.config.schema import FlowConfig
from opensora_lite.diffusion.av import AV_TASKS, Flags, LossBalance, av_flow_loss
from opensora_lite.models.flux import SPEC
from opensora_lite.models.flux.audio import AUDIO_PREFIXES, AudioStreamConfig, time_positions
from opensora_lite.models.flux.flops import mmdit_flops
from opensora_lite.models.flux.model import MMDiT
from opensora_lite.models.loading import load_into

AUDIO = AudioStreamConfig(latent_channels=32, latent_bins=4, latents_per_second=25.0, hidden_size=32, num_heads=2)


def tiny_av(**changes):
    return tiny_mmdit(attention_backend="math", audio=AUDIO, **changes)


class MelSpaceToDepth:
    """A stand-in audio autoencoder (the real ones are built elsewhere): the log-mel (16 bins, 100 frames
    a second) space-to-depth 4 x 4 -> [B, 2 x 16, frames / 4, 4] at 25 latent frames a second (LTX-2's
    latent rate and token size, 128), scaled to about unit size."""

    latents_per_second = 25.0

    def __init__(self):
        from opensora_lite.autoencoders.mel import LogMel
        from opensora_lite.config.schema import MelConfig

        self.mel = LogMel(MelConfig(n_fft=256, hop_length=160, n_mels=16, f_max=4000.0))

    def encode(self, audio: torch.Tensor, generator=None, context: int = 0) -> torch.Tensor:
        m = self.mel(audio, context)
        b, c, frames, bins = m.shape
        m = m[:, :, : frames // 4 * 4]
        z = m.reshape(b, c, frames // 4, 4, bins // 4, 4).permute(0, 1, 3, 5, 2, 4).reshape(b, c * 16, -1, bins // 4)
        return (z + 9.0) / 3.0


def tone(pitches_hz: list[float], seconds: float) -> torch.Tensor:
    """Stereo tones [B, 2, samples] at 16 kHz."""
    t = torch.arange(int(16000 * seconds)) / 16000
    return torch.stack([0.25 * torch.sin(2 * math.pi * f * t) for f in pitches_hz])[:, None].repeat(1, 2, 1)


def _inputs(batch=2, frames=3, generator=None):
    g = generator or torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, frames, 4, 6, generator=g)
    txt, y = torch.randn(batch, 5, 16, generator=g), torch.randn(batch, 8, generator=g)
    return x, torch.rand(batch, generator=g), txt, y


def test_a_video_checkpoint_with_audio_added_computes_the_same_video():
    torch.manual_seed(0)
    video = MMDiT(tiny_mmdit(attention_backend="math"))
    for p in video.parameters():  # a trained-looking checkpoint: nothing at zero
        torch.nn.init.normal_(p, std=0.1)
    av = MMDiT(tiny_av())
    report = load_into(av, video.state_dict(), "t2v", SPEC.optional_keys())
    assert report.missing and all(k.startswith(AUDIO_PREFIXES) for k in report.missing)
    x, t, txt, y = _inputs()
    audio = MelSpaceToDepth().encode(tone([261.6, 392.0], 0.41))  # 10 audio latent frames beside 3 video ones
    with torch.no_grad():
        ref = video(x, t, txt, y)
        got, sound = av(x, t, txt, y, audio=audio, audio_timesteps=torch.rand(2), video_rate=7.5)
        alone = av(x, t, txt, y)
    assert torch.equal(got, ref) and torch.equal(alone, ref)  # bitwise
    assert sound.shape == audio.shape and not sound.any()  # the audio output layer starts at zero
    # gradients reach the audio layers (the a2v gate first: the only way the video changes)
    out, sound = av(x, t, txt, y, audio=audio, audio_timesteps=torch.rand(2), video_rate=7.5)
    (out.pow(2).mean() + (sound - audio).pow(2).mean()).backward()
    grads = {n: p.grad for n, p in av.named_parameters() if n.startswith("audio_")}
    assert grads["audio_blocks.0.a2v_gate.weight"].abs().sum() > 0
    assert grads["audio_final_layer.linear.weight"].abs().sum() > 0


def test_a_meta_device_start_replays_the_audio_layers_init():
    """parallel.meta_init: initial_tensors gives every tensor (audio ones too) as a CPU build from the seed."""
    cfg = tiny_av()
    torch.manual_seed(5)
    ref = MMDiT(cfg, image_condition=True).state_dict()
    with torch.device("meta"):
        meta = MMDiT(cfg, image_condition=True)
    torch.manual_seed(5)
    got = dict(meta.initial_tensors())
    assert got.keys() == ref.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    assert not got["audio_blocks.1.a2v_gate.weight"].any() and got["audio_blocks.1.a2v_out.weight"].any()


def test_video_and_audio_frames_share_positions_in_seconds():
    # 25 audio latent frames a second, 7.5 video latent frames a second: both at 0.4 s and 1.2 s
    audio, video = time_positions(40, 25.0, 25.0), time_positions(10, 7.5, 25.0)
    assert audio[10, 0] == pytest.approx(video[3, 0]) and audio[30, 0] == pytest.approx(video[9, 0])
    assert audio[:, 0].tolist() == list(range(40))  # audio frames on integer positions


def test_moving_the_sound_in_time_changes_what_the_video_hears():
    """The time RoPE makes a2v attention depend on when a sound is relative to the frame."""
    torch.manual_seed(0)
    av = MMDiT(tiny_av())
    for p in av.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x, t, txt, y = _inputs(batch=1, frames=4)
    click = torch.zeros(1, 32, 12, 4)
    early, late = click.clone(), click.clone()
    early[:, :, 1], late[:, :, 10] = 3.0, 3.0
    with torch.no_grad():
        a, _ = av(x, t, txt, y, audio=early, audio_timesteps=t, video_rate=8.0)
        b, _ = av(x, t, txt, y, audio=late, audio_timesteps=t, video_rate=8.0)
    first, last = (a - b)[:, :, 0].abs().mean(), (a - b)[:, :, -1].abs().mean()
    assert first > 0 and last > 0


def test_flops_count_the_audio_tokens():
    cfg = tiny_av()
    model = MMDiT(cfg)
    x, t, txt, y = _inputs(batch=2, frames=3)
    audio = torch.randn(2, 32, 10, 4)
    with FlopCounterMode(display=False) as fwd:
        out, sound = model(x, t, txt, y, audio=audio, audio_timesteps=t, video_rate=7.5)
    with FlopCounterMode(display=False) as bwd:
        (out.pow(2).mean() + sound.pow(2).mean()).backward()
    expected = mmdit_flops(cfg, 3 * 2 * 3, 5, audio_tokens=10)
    assert expected.forward == pytest.approx(fwd.get_total_flops() / 2, rel=0.02)
    assert expected.backward == pytest.approx(bwd.get_total_flops() / 2, rel=0.02)
    assert expected.train > mmdit_flops(cfg, 18, 5).train
    blocks = SPEC.blocks(model)
    assert len(blocks["audio_blocks"]) == cfg.depth and set(SPEC.block_flops(cfg, 18, 5, 10)) == set(blocks)
    assert len(SPEC.blocks(MMDiT(tiny_mmdit()))["audio_blocks"]) == 0  # a video model: an empty group


@pytest.mark.parametrize("task", list(AV_TASKS))
def test_a_given_modality_stays_clean_and_out_of_the_loss(task):
    seen = {}
    x0, a0 = torch.randn(3, 4, 2, 4, 4), torch.randn(3, 32, 6, 4)

    def forward_av(xt, t, at, ta):
        seen.update(xt=xt, t=t, at=at, ta=ta)
        return xt * 0 + 1, at * 0 + 1

    flags = Flags.of([task] * 3)
    has_audio = torch.tensor([True, True, False])
    losses = av_flow_loss(
        forward_av, x0, a0, flags, has_audio, FlowConfig(), [1, 2, 2], torch.Generator().manual_seed(0)
    )
    gen_video, gen_audio, _ = AV_TASKS[task]
    assert torch.equal(seen["xt"], x0) == (not gen_video) and torch.equal(seen["at"], a0) == (not gen_audio)
    assert (seen["t"] == 0).all() == (not gen_video) and (seen["ta"] == 0).all() == (not gen_audio)
    assert losses["video"][1] == (3 if gen_video else 0) and losses["video"][0].item() == (
        0 if not gen_video else pytest.approx(losses["video"][0].item())
    )
    assert losses["audio"][1] == (2 if gen_audio else 0)  # the clip without sound is left out
    if not gen_video:
        assert losses["video"][0].item() == 0
    if not gen_audio:
        assert losses["audio"][0].item() == 0


def test_mixed_tasks_flag_each_sample():
    flags = Flags.of(["t2av", "v2a", "a2v", "i2av"])
    assert flags.video.tolist() == [True, False, True, True]
    assert flags.audio.tolist() == [True, True, False, True]
    assert flags.video_tasks == ["t2v", "t2v", "t2v", "i2v_head"]
    with pytest.raises(ValueError, match="unknown audio-video task"):
        Flags.of(["t2a"])


def test_running_mean_balance_gives_each_modality_its_weight():
    plain = LossBalance({"video": 1.0, "audio": 2.0})
    assert plain.scales({"video": 0.35, "audio": 0.7}) == {"video": 1.0, "audio": 2.0}
    bal = LossBalance({"video": 1.0, "audio": 2.0}, "running_mean", decay=0.5)
    assert bal.scales({"video": 0.35, "audio": 0.7}) == pytest.approx({"video": 1 / 0.35, "audio": 2 / 0.7})
    assert bal.scales({"video": 0.25, "audio": None}) == pytest.approx({"video": 1 / 0.3, "audio": 2 / 0.7})
    again = LossBalance({"video": 1.0, "audio": 2.0}, "running_mean", decay=0.5)
    again.load_state_dict(bal.state_dict())
    assert again.scales({}) == bal.scales({})
    with pytest.raises(ValueError, match="unknown balance"):
        LossBalance({"video": 1.0}, "uncertainty")


def test_the_audio_video_stage_trains_both_streams_and_logs_each_loss():
    """The stage's task object (kind audio_video) on the tiny config's real parts (pixel autoencoder,
    tiny text encoders, the single engine, model=tiny_av on mel_ae_tiny's 8 x 16 latents, its random
    weights): the config checks, a few steps of mixed tasks, both losses logged apart and falling, the
    balance's state in the checkpoint."""
    from contextlib import nullcontext
    from types import SimpleNamespace

    from conftest import typed

    from opensora_lite.autoencoders import build_autoencoder
    from opensora_lite.autoencoders.audio import build_audio_autoencoder
    from opensora_lite.config.validate import validate
    from opensora_lite.errors import ConfigError
    from opensora_lite.parallel import build_engine
    from opensora_lite.text.encoders import TextEncoders
    from opensora_lite.train.optim import build_optimizer
    from opensora_lite.train.tasks import StageContext, build_task

    cfg = typed(["model=tiny_av", "data.audio.enabled=true", "curriculum.stages.t2v.text_dropout={t5:0.0,clip:0.0}"])
    stage = cfg.curriculum.stages["t2v"]
    stage.kind, stage.tasks = "audio_video", {"t2av": 2.0, "v2a": 1.0, "a2v": 1.0, "i2av": 1.0}
    validate(cfg)
    audio, cfg.model.audio = cfg.model.audio, None
    with pytest.raises(ConfigError, match="model.audio"):
        validate(cfg)
    cfg.model.audio = audio
    device = torch.device("cpu")
    sound = tone([261.6, 329.6, 392.0, 493.9], 5 / 8)  # 5 frames at 8 fps
    audio_ae = build_audio_autoencoder(cfg.audio_autoencoder, seed=0)
    with torch.no_grad():  # its latents at zero mean and unit variance, as a curriculum scales a trained one's
        z = audio_ae.encode(sound)
    audio_ae.scaling_factor, audio_ae.shift_factor = 1.0 / float(z.std()), float(z.mean())
    rt = SimpleNamespace(cfg=cfg, device=device, autocast=nullcontext, audio_ae=audio_ae)
    rt.engine, rt.ae = build_engine(cfg.parallel, "cpu"), build_autoencoder(cfg.autoencoder)
    rt.text = TextEncoders(cfg.text_encoder, device)
    task = build_task(StageContext(rt, "t2v", 1, 0, cfg))
    torch.manual_seed(0)
    model = task.build_model()
    make = lambda params: build_optimizer(params, stage.optim, device)  # noqa: E731
    model, opt = rt.engine.prepare(model, make, stage.optim.grad_clip, task.blocks(model))
    colours = [[1, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]]  # a still square, its colour heard as a tone
    video = torch.zeros((4, 3, 5, 8, 8), dtype=torch.uint8)  # frames travel as uint8
    for i, c in enumerate(colours):
        video[i, :, :, 2:6, 2:6] = (127.5 * (torch.tensor(c) + 1)).to(torch.uint8)[:, None, None, None]
    batch = dict(video=video, audio=sound, has_audio=torch.ones(4, dtype=torch.bool), captions=["a square"] * 4)
    for g in opt.param_groups:
        g["lr"] = 2e-3
    logged = []
    for step in range(8):
        loss, tokens, flops = task.micro_step(model, batch, torch.Generator().manual_seed(step % 2), step, True)
        rt.engine.step(model, opt)
        logged.append(task.take_metrics())
    assert {"loss_video", "loss_audio", "loss_scale_video", "loss_scale_audio"} <= logged[0].keys()
    assert tokens == 4 * (5 * 4 * 4 + 16) and flops > 0  # 5 latent frames of 4 x 4 tokens, 16 audio frames
    for m in ("video", "audio"):
        first = logged[0][f"loss_{m}"] + logged[1][f"loss_{m}"]
        last = logged[-2][f"loss_{m}"] + logged[-1][f"loss_{m}"]
        assert last < 0.8 * first, (m, first, last)  # measured: 0.61 (video), 0.70 (audio) over 8 steps
    state = task.state_dict()
    assert set(state["balance"]["means"]) == {"video", "audio"}
