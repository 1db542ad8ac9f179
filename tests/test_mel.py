"""The log-mel front end (LTX-2's parameters) and its Griffin-Lim inverse, against values known by hand."""

import math

import pytest
import torch
from conftest import typed

from opensora_lite.autoencoders.mel import LogMel, hz_to_mel, mel_filterbank, mel_to_hz
from opensora_lite.config.schema import MelConfig
from opensora_lite.data.synthetic import COLOURS, PITCHES
from opensora_lite.errors import ConfigError

RATE = 16000


def tone(freq: float, seconds: float = 1.0, level: float = 0.25) -> torch.Tensor:
    t = torch.arange(int(RATE * seconds), dtype=torch.float64) / RATE
    return (level * torch.sin(2 * math.pi * freq * t)).float()


def test_mel_scales_and_filters():
    f = torch.tensor([0.0, 500.0, 1000.0, 4000.0], dtype=torch.float64)
    assert torch.allclose(hz_to_mel(f), torch.tensor([0.0, 7.5, 15.0, 15 + 27 * math.log(4) / math.log(6.4)]).double())
    assert abs(float(hz_to_mel(torch.tensor(1000.0), "htk")) - 1000.0) < 0.02  # 2595 log10(1 + 1000/700)
    for scale in ("slaney", "htk"):
        assert torch.allclose(mel_to_hz(hz_to_mel(f, scale), scale), f)
    fb = mel_filterbank(513, 0.0, 8000.0, 64, RATE)
    assert fb.shape == (513, 64) and float(fb.min()) == 0.0
    # Slaney normalisation: each triangle has unit area in Hz (the lowest are narrower than one bin: skip them)
    area = fb.sum(0) * (RATE / 1024)
    assert torch.allclose(area[8:], torch.ones(56, dtype=torch.float64), atol=0.02)


def test_ltx2_front_end_shapes_values_and_channels():
    cfg = typed().audio_autoencoder.mel  # the schema's defaults are LTX-2's
    assert (cfg.sample_rate, cfg.n_fft, cfg.hop_length, cfg.n_mels, cfg.mel_scale, cfg.norm) == (
        16000,
        1024,
        160,
        64,
        "slaney",
        "slaney",
    )
    mel = LogMel(cfg)
    f = 28 * RATE / 1024  # on an FFT bin: its Hann-window peak is level * n_fft / 4
    wave = torch.stack([tone(f), torch.zeros(RATE)])[None]  # left: the tone, right: silence
    spec = mel.spectrum(wave)
    assert spec.shape == (1, 2, 513, 101)
    assert abs(float(spec[0, 0, 28, 50]) - 0.25 * 1024 / 4) < 1e-3
    out = mel(wave)
    assert out.shape == (1, 2, 101, 64) == (1, 2, mel.num_frames(RATE), 64)  # 100 frames a second (+1, centred)
    assert torch.all(out[0, 1] == math.log(1e-5))  # silence sits at the floor, channels do not mix
    centres = mel_to_hz(torch.linspace(0, float(hz_to_mel(torch.tensor(8000.0))), 66)[1:-1])
    assert int(out[0, 0, 50].argmax()) == int((centres - f).abs().argmin())  # the tone's filter is the strongest


def test_context_gives_a_windows_frames_as_the_whole_track_has_them():
    """forward(wave, context=m): the window in the middle of `wave` framed with the m samples around it
    heard by its edge frames. With n_fft // 2 or more, the frames are the whole track's there (a tone
    cut from its middle has no edge burst); with none, the window alone is reflected at its edges, and a
    tone's kink there spreads energy over the high mels (log units above the floor it sits at inside)."""
    mel = LogMel(MelConfig())
    track = tone(PITCHES["red"], 2.0)[None, None].repeat(1, 2, 1)  # [1, 2, 32000]
    whole = mel(track)
    first, count = 4800, 10000  # frame 30 on: a whole number of hops in
    for margin in (512, 700):
        out = mel(track[..., first - margin : first + count + margin], context=margin)
        assert out.shape == (1, 2, count // 160 + 1, 64)
        assert torch.allclose(out, whole[:, :, 30 : 30 + out.shape[2]], atol=1e-3)
    alone = mel(track[..., first : first + count])
    assert torch.equal(mel(track[..., first : first + count], context=0), alone)
    inside = float(alone[0, 0, 20:40, 40:].mean())
    assert float(alone[0, 0, 0, 40:].mean()) > inside + 3 and float(alone[0, 0, -1, 40:].mean()) > inside + 3
    assert float(out[0, 0, 0, 40:].mean()) < inside + 0.5 and float(out[0, 0, -1, 40:].mean()) < inside + 0.5
    # fewer samples than n_fft // 2: the missing ones are the given sound's reflection at its ends
    part = mel(track[..., first - 100 : first + count + 100], context=100)
    assert part.shape == alone.shape and torch.allclose(part[:, :, 10:-10], out[:, :, 10:-10], atol=1e-3)
    assert not torch.allclose(part[:, :, :1], out[:, :, :1], atol=0.1)


def test_griffin_lim_gives_each_colours_pitch_back():
    mel = LogMel(MelConfig(griffin_lim_iters=32))
    wave = torch.stack([tone(PITCHES[c], 0.3) for c in COLOURS])[:, None]  # [6, 1, samples]
    logmel = mel(wave)
    back = mel.inverse(logmel, wave.shape[-1])
    assert back.shape == wave.shape
    spectrum = torch.fft.rfft(back[:, 0] * torch.hann_window(wave.shape[-1]), n=8 * wave.shape[-1]).abs()
    heard = spectrum.argmax(-1).double() * RATE / (8 * wave.shape[-1])
    for colour, hz in zip(COLOURS, heard.tolist()):
        assert abs(hz - PITCHES[colour]) / PITCHES[colour] < 0.06  # within a mel filter of the tone
        assert min(PITCHES, key=lambda c: abs(PITCHES[c] - hz)) == colour
    error = (torch.exp(mel(back)) - torch.exp(logmel)).norm() / torch.exp(logmel).norm()
    assert error < 0.2  # a listening aid: the mel comes back within 20%


def test_mel_settings_are_checked_by_key():
    with pytest.raises(ConfigError, match=r"^audio_autoencoder.mel.f_max: above the Nyquist"):
        typed(["audio_autoencoder.mel.f_max=9000"])
    with pytest.raises(ConfigError, match=r"^audio_autoencoder.mel.mel_scale: unknown 'bark'"):
        typed(["audio_autoencoder.mel.mel_scale=bark"])
