"""LTX-2's audio VAE (diffusers' AutoencoderKLLTX2Audio) and vocoder (LTX2Vocoder), frozen, loaded from
local diffusers folders only.

The VAE takes the stereo log-mel the front end computes (16 kHz, n_fft 1024, hop 160, 64 Slaney bins:
`audio_autoencoder.mel`'s defaults; it does not compute it itself) and gives 8 latent channels, 4x down
in time (causally: 1 + 4k log-mel frames <-> 1 + k latent frames) and in mel: [B, 8, T', 16], 25 latent
frames a second. LTX-2 normalises the latents per feature of its tokens, a token being one latent
frame's 8 x 16 = 128 values: (z - latents_mean) / latents_std with the statistics stored with the
weights (the `latents_mean`, `latents_std` buffers), or read here from `audio_autoencoder.stats_path`
(a .safetensors with those two names: 128 values, or one per channel).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from opensora_lite.autoencoders.audio import AudioAutoencoder, Vocoder
from opensora_lite.config.schema import AudioAutoencoderConfig
from opensora_lite.dtypes import DTYPES
from opensora_lite.errors import CheckpointError


def _vae_class():
    from diffusers import AutoencoderKLLTX2Audio

    return AutoencoderKLLTX2Audio


def _vocoder_class():
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    return LTX2Vocoder


# Tiny architectures for tests and --smoke runs: the released layout (causal in time, pixel norm, 4x down
# in time and mel, stereo) at a fraction of the width. The VAE's statistics buffers have base_channels
# entries, so base_channels = latent_channels x latent mel bins (2 x 16 here; 128 = 8 x 16 released).
TINY_VAE = dict(base_channels=32, ch_mult=(1, 1, 1), num_res_blocks=1, latent_channels=2, mel_bins=64)
TINY_VOCODER = dict(
    in_channels=128,  # 2 channels x 64 mel bins
    hidden_channels=32,
    upsample_kernel_sizes=[12, 10, 4, 4, 4],
    upsample_factors=[6, 5, 2, 2, 2],  # x240: 100 log-mel frames a second -> 24 kHz, as released
    resnet_kernel_sizes=[3],
    resnet_dilations=[[1]],
)


def random_audio_vae(tiny: bool = False, **changes) -> nn.Module:
    """An AutoencoderKLLTX2Audio with random weights (global RNG): diffusers' default architecture (the
    released one) or TINY_VAE; `changes` override constructor arguments."""
    return _vae_class()(**{**(TINY_VAE if tiny else {}), **changes})


def random_vocoder(tiny: bool = False, **changes) -> nn.Module:
    """An LTX2Vocoder with random weights: the default (released) architecture or TINY_VOCODER."""
    return _vocoder_class()(**{**(TINY_VOCODER if tiny else {}), **changes})


def _load(cls, path_str: str | None, key: str, what: str, dtype: str) -> nn.Module:
    """A diffusers model of `cls` from a local folder; every problem is one CheckpointError naming `key`."""
    path = Path(path_str) if path_str else None
    if path is None or not path.exists():
        raise CheckpointError(f"{key}: {path_str!r} does not exist ({what} weights load from local folders only)")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise CheckpointError(f"{key}: {path} is not a diffusers folder (config.json + diffusion_pytorch_model.*)")
    if not any(path.glob("diffusion_pytorch_model*")):
        raise CheckpointError(f"{key}: {path} has no weights (diffusion_pytorch_model.safetensors)")
    try:
        return cls.from_pretrained(path, torch_dtype=DTYPES[dtype], local_files_only=True)
    except (OSError, ValueError) as e:  # unreadable or mismatched weights
        raise CheckpointError(f"{key}: cannot load {what} from {path}: {' '.join(str(e).split())}") from e


def _stats(path_str: str) -> tuple[Tensor, Tensor]:
    from safetensors.torch import load_file

    path = Path(path_str)
    if not path.is_file():
        raise CheckpointError(f"audio_autoencoder.stats_path: {path_str!r} is not a file")
    try:
        stats = load_file(path)
        return stats["latents_mean"].float().flatten(), stats["latents_std"].float().flatten()
    except Exception as e:  # not safetensors, or without the two names
        raise CheckpointError(
            f"audio_autoencoder.stats_path: {path} is not a .safetensors holding latents_mean and latents_std ({e})"
        ) from e


class LTX2AudioVAE(AudioAutoencoder):
    """AutoencoderKLLTX2Audio behind the audio interface (module docstring), frozen. `vae`: an instance to
    wrap instead of loading `audio_autoencoder.path`."""

    causal = True

    def __init__(self, cfg: AudioAutoencoderConfig, vae: nn.Module | None = None):
        super().__init__(cfg)
        if vae is None:
            vae = _load(_vae_class(), cfg.path, "audio_autoencoder.path", "the LTX-2 audio VAE", cfg.dtype)
        c, m = vae.config, cfg.mel
        got = dict(
            channels=c.in_channels,
            latent_channels=c.latent_channels,
            time_factor=vae.temporal_compression_ratio,
            mel_factor=vae.mel_compression_ratio,
        )
        for name, value in got.items():
            if getattr(cfg, name) != value:
                raise CheckpointError(f"audio_autoencoder.{name}: the LTX-2 audio VAE has {value}, the config says "
                                      f"{getattr(cfg, name)}")  # fmt: skip
        for name, value, want in (
            ("sample_rate", c.sample_rate, m.sample_rate),
            ("hop_length", c.mel_hop_length, m.hop_length),
            ("n_mels", c.mel_bins, m.n_mels),
        ):
            if value != want:
                raise CheckpointError(f"audio_autoencoder.mel.{name}: the LTX-2 audio VAE takes {value}, the front "
                                      f"end gives {want}")  # fmt: skip
        self.vae = vae.requires_grad_(False).eval()
        features = (cfg.latent_channels, m.n_mels // cfg.mel_factor)
        mean, std = _stats(cfg.stats_path) if cfg.stats_path else (vae.latents_mean, vae.latents_std)
        n = features[0] * features[1]
        if mean.numel() not in (n, features[0]) or std.numel() != mean.numel():
            source = "audio_autoencoder.stats_path" if cfg.stats_path else "audio_autoencoder.path"
            raise CheckpointError(
                f"{source}: latents_mean/std have {mean.numel()}/{std.numel()} values; the latents have {n} "
                f"features ({features[0]} channels x {features[1]} mel bins) or {features[0]} channels"
            )
        shape = (1, features[0], 1, features[1] if mean.numel() == n else 1)  # feature c * bins + f: channel-major
        self.register_buffer("latents_mean", mean.detach().float().reshape(shape).clone(), persistent=False)
        self.register_buffer("latents_std", std.detach().float().reshape(shape).clone(), persistent=False)

    def train(self, mode: bool = True) -> "LTX2AudioVAE":
        return super().train(False)  # always frozen

    def normalize(self, z: Tensor) -> Tensor:
        return super().normalize((z - self.latents_mean.to(z)) / self.latents_std.to(z))

    def denormalize(self, latents: Tensor) -> Tensor:
        return super().denormalize(latents) * self.latents_std.to(latents) + self.latents_mean.to(latents)

    def encode_mel(self, logmel: Tensor, sample: bool = True, generator: torch.Generator | None = None) -> Tensor:
        dtype = next(self.vae.encoder.parameters()).dtype
        posterior = self.vae.encode(logmel.to(dtype)).latent_dist
        return posterior.sample(generator) if sample else posterior.mode()

    def decode_mel(self, z: Tensor) -> Tensor:
        dtype = next(self.vae.decoder.parameters()).dtype
        return self.vae.decode(z.to(dtype)).sample


class LTX2AudioVocoder(Vocoder):
    """LTX2Vocoder from `audio_autoencoder.vocoder.path`: the log-mel of LTX-2's front end -> waveform at its
    `output_sampling_rate` (24 kHz released: 240 samples per log-mel frame). `vocoder`: an instance to wrap."""

    def __init__(self, cfg: AudioAutoencoderConfig, vocoder: nn.Module | None = None):
        super().__init__()
        v = cfg.vocoder
        self.vocoder = (
            (
                _load(_vocoder_class(), v.path, "audio_autoencoder.vocoder.path", "the LTX-2 vocoder", v.dtype)
                if vocoder is None
                else vocoder
            )
            .requires_grad_(False)
            .eval()
        )
        features = cfg.channels * cfg.mel.n_mels
        if self.vocoder.config.in_channels != features:
            raise CheckpointError(
                f"audio_autoencoder.vocoder.path: the vocoder takes {self.vocoder.config.in_channels} features a "
                f"frame, the front end gives {features} ({cfg.channels} channels x {cfg.mel.n_mels} mel bins)"
            )
        self.sample_rate = int(self.vocoder.config.output_sampling_rate)

    def train(self, mode: bool = True) -> "LTX2AudioVocoder":
        return super().train(False)

    @torch.no_grad()
    def forward(self, logmel: Tensor, num_samples: int | None = None) -> Tensor:
        """Its own length, whatever `num_samples` (the caller cuts or pads)."""
        dtype = next(self.vocoder.parameters()).dtype
        return self.vocoder(logmel.to(dtype)).float()
