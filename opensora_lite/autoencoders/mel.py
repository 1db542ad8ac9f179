"""The log-mel front end of audio autoencoders, and an inverse for listening on a CPU. Torch only
(torchaudio is not installed beside the CPU torch here, and none of it is needed).

LTX-2's audio VAE (diffusers' AutoencoderKLLTX2Audio) takes a stereo log-mel it does not compute
itself; the trainer does. With `MelConfig`'s defaults this module computes the same transform as
LTX-2's trainers (a torchaudio MelSpectrogram with these settings, then a log):

    mel = log(max(|STFT(x)|^power @ M, log_floor))        [batch, channels, frames, n_mels]

- STFT: Hann window (periodic) of win_length, n_fft points, hop_length apart, centred (the signal is
  reflect-padded by n_fft // 2 on both sides): samples // hop + 1 frames, 100 a second at 16 kHz / 160.
  A window cut from a longer track can bring its context instead (`forward(wave, context=m)`: m samples
  of the track on each side, data/audio.py): the edge frames then see the real sound around the window,
  not its reflection (which folds a tone back on itself: a kink, broadband energy in the first and last
  frames of every window cut from the middle of a sound), and equal the whole track's frames there.
- M: n_mels triangular filters evenly spaced on the mel scale between f_min and f_max (the Slaney
  scale: linear to 1 kHz, logarithmic above; or HTK's 2595 log10(1 + f / 700)), each scaled by
  2 / (its width in Hz) with Slaney normalisation (equal area): torchaudio's `melscale_fbanks` and
  librosa's `filters.mel(htk=False, norm="slaney")`.

The inverse (`LogMel.inverse`) undoes the log, finds a non-negative magnitude spectrum whose mel it is
(the filters' pseudo-inverse, clamped, refined by multiplicative least squares), and finds a phase by
fast Griffin-Lim (Perraudin, Balazs and Sondergaard 2013: momentum 0.99). It is a listening aid for
tiny models, not a vocoder: expect the pitch and timing back, with a metallic timbre.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from opensora_lite.config.schema import MelConfig

_SLANEY_F_SP = 200.0 / 3  # Hz per mel below the break
_SLANEY_BREAK_HZ = 1000.0
_SLANEY_BREAK_MEL = _SLANEY_BREAK_HZ / _SLANEY_F_SP  # 15
_SLANEY_LOG_STEP = math.log(6.4) / 27.0  # log-frequency per mel above the break


def hz_to_mel(f: torch.Tensor, scale: str = "slaney") -> torch.Tensor:
    if scale == "htk":
        return 2595.0 * torch.log10(1.0 + f / 700.0)
    linear = f / _SLANEY_F_SP
    log = _SLANEY_BREAK_MEL + torch.log(f.clamp(min=1e-10) / _SLANEY_BREAK_HZ) / _SLANEY_LOG_STEP
    return torch.where(f >= _SLANEY_BREAK_HZ, log, linear)


def mel_to_hz(m: torch.Tensor, scale: str = "slaney") -> torch.Tensor:
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    linear = m * _SLANEY_F_SP
    log = _SLANEY_BREAK_HZ * torch.exp(_SLANEY_LOG_STEP * (m - _SLANEY_BREAK_MEL))
    return torch.where(m >= _SLANEY_BREAK_MEL, log, linear)


def mel_filterbank(
    n_freqs: int,
    f_min: float,
    f_max: float,
    n_mels: int,
    sample_rate: int,
    scale: str = "slaney",
    norm: str | None = "slaney",
) -> torch.Tensor:
    """Triangular mel filters as float64 [n_freqs, n_mels] (STFT bins 0 .. sample_rate / 2 by rows)."""
    freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=torch.float64)
    lo, hi = hz_to_mel(torch.tensor([float(f_min), float(f_max)], dtype=torch.float64), scale).tolist()
    edges = mel_to_hz(torch.linspace(lo, hi, n_mels + 2, dtype=torch.float64), scale)  # filter i: edges i .. i + 2
    widths = edges[1:] - edges[:-1]  # [n_mels + 1]
    slopes = edges[None, :] - freqs[:, None]  # [n_freqs, n_mels + 2]
    rising = -slopes[:, :-2] / widths[:-1]
    falling = slopes[:, 2:] / widths[1:]
    fb = torch.clamp(torch.minimum(rising, falling), min=0.0)
    if norm == "slaney":
        fb = fb * (2.0 / (edges[2 : n_mels + 2] - edges[:n_mels]))[None, :]
    return fb


class LogMel(nn.Module):
    """waveform [batch, channels, samples] -> log-mel [batch, channels, frames, n_mels] (module docstring),
    and back with `inverse`. Channels are transformed independently (LTX-2: stereo in, 2 channels out)."""

    def __init__(self, cfg: MelConfig):
        super().__init__()
        self.cfg = cfg
        self.win_length = cfg.win_length or cfg.n_fft
        f_max = cfg.f_max if cfg.f_max is not None else cfg.sample_rate / 2
        fb = mel_filterbank(cfg.n_fft // 2 + 1, cfg.f_min, f_max, cfg.n_mels, cfg.sample_rate, cfg.mel_scale, cfg.norm)
        self.register_buffer("filters", fb.float(), persistent=False)
        self.register_buffer("unfilters", torch.linalg.pinv(fb).float(), persistent=False)  # [n_mels, n_freqs]
        self.register_buffer("window", torch.hann_window(self.win_length), persistent=False)

    def num_frames(self, num_samples: int) -> int:
        """Frames of a waveform of `num_samples` samples (centred STFT)."""
        return num_samples // self.cfg.hop_length + 1

    def _stft(self, x: torch.Tensor, center: bool = True) -> torch.Tensor:
        c = self.cfg
        window = self.window
        return torch.stft(x, c.n_fft, c.hop_length, self.win_length, window, center, "reflect", return_complex=True)

    def spectrum(self, wave: torch.Tensor, context: int = 0) -> torch.Tensor:
        """|STFT|^power as [batch, channels, n_fft // 2 + 1, frames] of a waveform [batch, channels,
        samples]. `context`: the waveform holds that many samples of context on each side of the window
        whose frames are wanted (module docstring); the centred STFT uses n_fft // 2 of them and reflects
        the window only where fewer are given."""
        b, ch, n = wave.shape
        x = wave.reshape(b * ch, n).float()
        if context:
            half = self.cfg.n_fft // 2
            if context >= half:
                x = x[:, context - half : n - (context - half)]
            else:  # the rest of the half window: the given sound's reflection at its ends
                x = nn.functional.pad(x[:, None], (half - context, half - context), mode="reflect")[:, 0]
            spec = self._stft(x, center=False).abs()
        else:
            spec = self._stft(x).abs()
        if self.cfg.power != 1.0:
            spec = spec.pow(self.cfg.power)
        return spec.reshape(b, ch, *spec.shape[-2:])

    def forward(self, wave: torch.Tensor, context: int = 0) -> torch.Tensor:
        """The log-mel [batch, channels, frames, n_mels] of a waveform [batch, channels, samples]
        (`context`: samples of context on each side, not framed themselves: `spectrum`)."""
        mel = torch.matmul(self.spectrum(wave, context).transpose(-1, -2), self.filters)
        return torch.log(torch.clamp(mel, min=self.cfg.log_floor))

    @torch.no_grad()
    def inverse(
        self, logmel: torch.Tensor, num_samples: int | None = None, iters: int | None = None, seed: int = 0
    ) -> torch.Tensor:
        """A waveform [batch, channels, samples] whose log-mel is close to `logmel` (fast Griffin-Lim from a
        seeded random phase; `num_samples`: the length, default (frames - 1) * hop)."""
        c = self.cfg
        b, ch, frames, _ = logmel.shape
        mel = torch.exp(logmel.float())
        spec = self._unfilter(mel)
        mag = (spec.pow(1.0 / c.power) if c.power != 1.0 else spec).transpose(-1, -2).reshape(b * ch, -1, frames)
        length = num_samples if num_samples is not None else (frames - 1) * c.hop_length
        gen = torch.Generator().manual_seed(seed)
        phase = torch.polar(torch.ones_like(mag), 2 * math.pi * torch.rand(mag.shape, generator=gen))
        previous = torch.zeros_like(phase)
        momentum = 0.99 / (1 + 0.99)
        for _ in range(iters or c.griffin_lim_iters):
            rebuilt = self._stft(self._istft(mag * phase, length))
            phase = rebuilt - momentum * previous
            phase = phase / phase.abs().clamp(min=1e-16)
            previous = rebuilt
        return self._istft(mag * phase, length).reshape(b, ch, length)

    def _unfilter(self, mel: torch.Tensor, iters: int = 100) -> torch.Tensor:
        """A non-negative |STFT|^power [..., frames, n_freqs] whose mel is `mel`: the pseudo-inverse's answer
        clamped at 0, refined by multiplicative non-negative least squares (the clamp alone leaves the
        mel 10-15% off on tones; 100 updates bring it to ~1%)."""
        spec = torch.clamp(torch.matmul(mel, self.unfilters), min=1e-6)
        target = torch.matmul(mel, self.filters.T)
        for _ in range(iters):  # through the filters (64 wide), not their 513 x 513 Gram matrix: 8x fewer flops
            fitted = torch.matmul(torch.matmul(spec, self.filters), self.filters.T)
            spec = torch.clamp(spec * target / (fitted + 1e-10), min=1e-12)  # no denormals
        return spec

    def _istft(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        c = self.cfg
        return torch.istft(spec, c.n_fft, c.hop_length, self.win_length, self.window, center=True, length=length)
