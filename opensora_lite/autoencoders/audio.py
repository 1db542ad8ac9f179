"""The audio autoencoder interface: sound <-> scaled latents the diffusion model's audio stream works in,
beside the video one (base.Autoencoder); and vocoders, log-mel -> waveform for listening.

    waveform [B, channels, samples] in [-1, 1] --LogMel--> log-mel [B, channels, frames, mels]
        --encode--> latents [B, latent_channels, ceil(frames / time_factor), mels / mel_factor]
        --decode--> log-mel [B, channels, frames, mels] --vocoder--> waveform

With LTX-2's front end (16 kHz, hop 160: 100 log-mel frames a second) and 4x down in time, that is 25
latent frames a second; `latents_per_second` says it for any setting. A window of n samples has
n // hop + 1 log-mel frames (centred STFT) and ceil(that / time_factor) latent frames; a window of no
samples (an image's) has none.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from opensora_lite.autoencoders.mel import LogMel
from opensora_lite.config.schema import AudioAutoencoderConfig
from opensora_lite.registry import AUDIO_AUTOENCODER_KINDS, VOCODER_KINDS


def latent_geometry(cfg: AudioAutoencoderConfig) -> tuple[int, int, float]:
    """(latent channels, latent bins, latent frames a second) of the latents `cfg` gives, from its settings
    alone: what model.audio must say (config/validate.py checks it at start-up) and what osl-plan counts.
    ltx2_audio's own config.json is checked against these settings when it is built."""
    m = cfg.mel
    return cfg.latent_channels, m.n_mels // cfg.mel_factor, m.sample_rate / m.hop_length / cfg.time_factor


def window_latent_frames(cfg: AudioAutoencoderConfig, num_samples: int) -> int:
    """Latent frames of a window of `num_samples` samples: ceil((n // hop + 1) / time_factor), none for
    no samples (an image's window)."""
    return math.ceil((num_samples // cfg.mel.hop_length + 1) / cfg.time_factor) if num_samples > 0 else 0


class AudioAutoencoder(nn.Module, ABC):
    """Encode sound (a waveform [B, ch, samples], or its log-mel [B, ch, frames, mels]) to scaled latents
    [B, C, T', F'] and decode them back to a log-mel. The front end (`self.mel`, a LogMel of
    `audio_autoencoder.mel`) is part of the autoencoder, so every caller computes the same input.

    `causal`: the decoder gives time_factor * T' - (time_factor - 1) frames (LTX-2's audio VAE), else
    time_factor * T'; `decode(latents, mel_frames)` cuts (or extends with silence) to the count asked for.
    """

    latent_channels: int
    time_factor: int
    mel_factor: int
    causal: bool

    def __init__(self, cfg: AudioAutoencoderConfig):
        super().__init__()
        self.cfg = cfg
        self.mel = LogMel(cfg.mel)
        self.channels, self.latent_channels = cfg.channels, cfg.latent_channels
        self.time_factor, self.mel_factor = cfg.time_factor, cfg.mel_factor
        self.scaling_factor, self.shift_factor = cfg.scaling_factor, cfg.shift_factor

    # -- geometry ------------------------------------------------------------------------------------
    @property
    def latents_per_second(self) -> float:
        """Latent frames per second of sound (25 for LTX-2's settings)."""
        return latent_geometry(self.cfg)[2]

    def latent_frames(self, mel_frames: int) -> int:
        return math.ceil(mel_frames / self.time_factor)

    def latent_shape(self, num_samples: int) -> tuple[int, int, int]:
        """(C, T', F') of the latents of a waveform of `num_samples` samples."""
        frames = self.latent_frames(self.mel.num_frames(num_samples)) if num_samples > 0 else 0
        return self.latent_channels, frames, self.cfg.mel.n_mels // self.mel_factor

    def decoded_frames(self, latent_frames: int) -> int:
        """The log-mel frames the decoder itself gives for `latent_frames` latent frames."""
        k = self.time_factor
        return max(k * latent_frames - (k - 1), 1) if self.causal else k * latent_frames

    @property
    def silence(self) -> float:
        """The log-mel value of silence (log of the front end's floor)."""
        return math.log(self.cfg.mel.log_floor)

    # -- the interface ---------------------------------------------------------------------------------
    def logmel(self, audio: Tensor, context: int = 0) -> Tensor:
        """A waveform's log-mel (a 4-D log-mel is returned as it is). `context`: samples of context the
        waveform holds on each side of its window (the front end's `forward`; data/audio.py)."""
        if audio.ndim == 4:
            return audio
        if audio.ndim != 3 or audio.shape[1] != self.channels:
            raise ValueError(
                f"{type(self).__name__} takes [B, {self.channels}, samples] or a log-mel [B, {self.channels}, "
                f"frames, mels], got {tuple(audio.shape)}"
            )
        return self.mel(audio, context)

    @torch.no_grad()
    def encode(
        self, audio: Tensor, sample: bool = True, generator: torch.Generator | None = None, context: int = 0
    ) -> Tensor:
        """Scaled latents [B, C, T', F'] of a waveform or log-mel. A VAE draws from its posterior when
        `sample` (noise from `generator`), else takes its mean; a deterministic autoencoder ignores both.
        A waveform without samples has latents without frames. `context`: a waveform's samples of context
        on each side of its window (data/audio.py `front_end_input`), heard by the front end's edge
        frames, not framed themselves."""
        if audio.ndim == 3 and audio.shape[-1] - 2 * context <= 0:
            return torch.zeros(audio.shape[0], *self.latent_shape(0), device=audio.device)
        logmel = self.logmel(audio, context)
        n_mels = self.cfg.mel.n_mels
        if logmel.shape[1] != self.channels or logmel.shape[-1] != n_mels:
            raise ValueError(
                f"{type(self).__name__} encodes a log-mel [B, {self.channels}, frames, {n_mels}], "
                f"got {tuple(logmel.shape)}"
            )
        return self.normalize(self.encode_mel(logmel.float(), sample, generator).float())

    @torch.no_grad()
    def decode(self, latents: Tensor, mel_frames: int | None = None) -> Tensor:
        """The log-mel [B, channels, mel_frames, mels] of scaled latents (None: the decoder's own count,
        `decoded_frames`); frames past what the decoder gives are silence."""
        wanted = self.decoded_frames(latents.shape[2]) if mel_frames is None else mel_frames
        if self.latent_frames(wanted) != latents.shape[2]:
            raise ValueError(
                f"{type(self).__name__}: {latents.shape[2]} latent frames decode to "
                f"{self.time_factor * (latents.shape[2] - 1) + 1}..{self.time_factor * latents.shape[2]} "
                f"log-mel frames, not {wanted}"
            )
        mel = self.decode_mel(self.denormalize(latents.float())).float()[:, :, :wanted]
        if mel.shape[2] < wanted:
            mel = nn.functional.pad(mel, (0, 0, 0, wanted - mel.shape[2]), value=self.silence)
        return mel

    def normalize(self, z: Tensor) -> Tensor:
        """Raw latents -> the latents the model sees."""
        return (z - self.shift_factor) * self.scaling_factor

    def denormalize(self, latents: Tensor) -> Tensor:
        return latents / self.scaling_factor + self.shift_factor

    @abstractmethod
    def encode_mel(self, logmel: Tensor, sample: bool, generator: torch.Generator | None) -> Tensor:
        """Raw latents [B, C, ceil(frames / time_factor), mels / mel_factor] of a log-mel."""

    @abstractmethod
    def decode_mel(self, z: Tensor) -> Tensor:
        """A log-mel [B, channels, decoded_frames(T'), mels] of raw latents."""


def build_audio_autoencoder(cfg: AudioAutoencoderConfig, seed: int | None = None) -> AudioAutoencoder:
    """The audio autoencoder of `cfg` (kind: registry.AUDIO_AUTOENCODER_KINDS). `seed`: random weights
    (mel_ae without a path) are drawn from it, leaving the global RNG as it was (the run and osl-cache
    build the same one); None: from the global RNG (an autoencoder stage seeds it itself)."""
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_audio_autoencoder(cfg)
    if cfg.kind == "mel_ae":
        from opensora_lite.autoencoders.mel_ae import MelAutoencoder

        return MelAutoencoder(cfg)
    if cfg.kind == "ltx2_audio":
        from opensora_lite.autoencoders.ltx2_audio import LTX2AudioVAE

        return LTX2AudioVAE(cfg)
    raise ValueError(f"audio_autoencoder.kind: unknown {cfg.kind!r}; choose from {AUDIO_AUTOENCODER_KINDS}")


# -- vocoders ------------------------------------------------------------------------------------------
class Vocoder(nn.Module, ABC):
    """Log-mel [B, channels, frames, mels] -> waveform [B, channels, samples] at `sample_rate`.
    `num_samples`: the length wanted (the sound the log-mel was taken of), where the vocoder can give it;
    None, or a vocoder of fixed output length: its own length (the caller cuts or pads)."""

    sample_rate: int

    @abstractmethod
    def forward(self, logmel: Tensor, num_samples: int | None = None) -> Tensor: ...


class GriffinLimVocoder(Vocoder):
    """The front end's own inverse (mel.py: fast Griffin-Lim, torch, CPU): a listening aid for tiny models,
    at the front end's rate, `num_samples` long ((frames - 1) * hop when None). A window of n samples has
    n // hop + 1 frames, so (frames - 1) * hop falls up to hop - 1 samples short of it (10000 samples:
    9920): asked for n, the last frame's half window fills the rest, where padding with silence would
    stop a sound dead, a step heard as a click at the clip's end."""

    def __init__(self, cfg: AudioAutoencoderConfig):
        super().__init__()
        self.mel = LogMel(cfg.mel)
        self.sample_rate = cfg.mel.sample_rate

    @torch.no_grad()
    def forward(self, logmel: Tensor, num_samples: int | None = None) -> Tensor:
        return self.mel.inverse(logmel, num_samples)


def build_vocoder(cfg: AudioAutoencoderConfig) -> Vocoder:
    """The vocoder of `cfg.vocoder` (kind: registry.VOCODER_KINDS)."""
    if cfg.vocoder.kind == "griffin_lim":
        return GriffinLimVocoder(cfg)
    if cfg.vocoder.kind == "ltx2":
        from opensora_lite.autoencoders.ltx2_audio import LTX2AudioVocoder

        return LTX2AudioVocoder(cfg)
    raise ValueError(f"audio_autoencoder.vocoder.kind: unknown {cfg.vocoder.kind!r}; choose from {VOCODER_KINDS}")
