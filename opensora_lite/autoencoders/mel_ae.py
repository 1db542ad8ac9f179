"""A small log-mel autoencoder of our own (audio_autoencoder.kind=mel_ae): the audio stream's CPU proof,
trained in an autoencoder stage (stage.reconstruction.modality=audio) with Griffin-Lim as its vocoder.

    log-mel [B, ch, T, M] -> (x - input_shift) / input_scale -> conv_in -> per stage: depth residual
    blocks, then (but after the last) a stride-2 convolution halving time and mel -> norm, SiLU ->
    conv_out -> latents [B, latent_channels, ceil(T / f), M / f], f = 2 ** (len(widths) - 1)

and the mirror image back (nearest-neighbour doubling + convolution). Deterministic (no posterior). The
norm is an RMS over channels at each (time, mel) position: nothing depends on the clip's length or on
the other clips of a batch, so a window's latents are the same in any batch. A log-mel whose frame
count is not a multiple of f is extended with silence before encoding; decoding cuts it back.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from opensora_lite.autoencoders.audio import AudioAutoencoder
from opensora_lite.config.schema import AudioAutoencoderConfig
from opensora_lite.errors import CheckpointError


class ChannelRMSNorm(nn.Module):
    """x / rms over channels, per position, with a learnt per-channel gain."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + self.eps) * self.gain


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm1, self.conv1 = ChannelRMSNorm(channels), nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2, self.conv2 = ChannelRMSNorm(channels), nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        return x + self.conv2(nn.functional.silu(self.norm2(h)))


class Encoder(nn.Module):
    def __init__(self, channels: int, widths: list[int], depth: int, latent_channels: int):
        super().__init__()
        self.conv_in = nn.Conv2d(channels, widths[0], 3, padding=1)
        self.stages = nn.ModuleList(nn.Sequential(*(ResBlock(w) for _ in range(depth))) for w in widths)
        self.down = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(widths, widths[1:]))
        self.norm_out = ChannelRMSNorm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], latent_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i < len(self.down):
                x = self.down[i](x)
        return self.conv_out(nn.functional.silu(self.norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, latent_channels: int, widths: list[int], depth: int, channels: int):
        super().__init__()
        rev = widths[::-1]
        self.conv_in = nn.Conv2d(latent_channels, rev[0], 3, padding=1)
        self.stages = nn.ModuleList(nn.Sequential(*(ResBlock(w) for _ in range(depth))) for w in rev)
        self.up = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(rev, rev[1:]))
        self.norm_out = ChannelRMSNorm(rev[-1])
        self.conv_out = nn.Conv2d(rev[-1], channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.conv_in(z)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i < len(self.up):
                x = self.up[i](nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.conv_out(nn.functional.silu(self.norm_out(x)))


class MelAutoencoder(AudioAutoencoder):
    """The small log-mel autoencoder (module docstring); `audio_autoencoder.path`: its weights (a
    .safetensors file, e.g. an autoencoder stage's final model.safetensors), else random ones."""

    causal = False

    def __init__(self, cfg: AudioAutoencoderConfig):
        super().__init__(cfg)
        a = cfg.mel_ae
        factor = 2 ** (len(a.widths) - 1)
        if (cfg.time_factor, cfg.mel_factor) != (factor, factor):
            raise ValueError(
                f"audio_autoencoder.mel_ae.widths: {len(a.widths)} stages halve time and mel {factor}x, the config "
                f"says time_factor {cfg.time_factor}, mel_factor {cfg.mel_factor}"
            )
        self.input_shift, self.input_scale = a.input_shift, a.input_scale
        self.encoder = Encoder(cfg.channels, list(a.widths), a.depth, cfg.latent_channels)
        self.decoder = Decoder(cfg.latent_channels, list(a.widths), a.depth, cfg.channels)
        if cfg.path is not None:
            self._load(cfg.path)

    def _load(self, path_str: str) -> None:
        from safetensors.torch import load_file

        path = Path(path_str)
        if not path.is_file():
            raise CheckpointError(
                f"audio_autoencoder.path: {path_str!r} is not a file (mel_ae loads a .safetensors of its weights)"
            )
        try:
            state = load_file(path)
        except Exception as e:  # not safetensors
            raise CheckpointError(f"audio_autoencoder.path: cannot read {path} as safetensors: {e}") from e
        missing, unexpected = super().load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"audio_autoencoder.path: {path} does not fit mel_ae (audio_autoencoder.mel_ae): {len(missing)} "
                f"missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
            )

    def _padded(self, logmel: Tensor) -> Tensor:
        extra = -logmel.shape[2] % self.time_factor
        return nn.functional.pad(logmel, (0, 0, 0, extra), value=self.silence) if extra else logmel

    def encode_mel(self, logmel: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        return self.encoder((self._padded(logmel) - self.input_shift) / self.input_scale)

    def decode_mel(self, z: Tensor) -> Tensor:
        return self.decoder(z) * self.input_scale + self.input_shift

    def reconstruct(self, logmel: Tensor) -> tuple[Tensor, Tensor]:
        """(the reconstruction of `logmel`, same shape; its raw latents): what an autoencoder stage trains."""
        z = self.encode_mel(logmel)
        return self.decode_mel(z)[:, :, : logmel.shape[2]], z

    def forward(self, logmel: Tensor) -> Tensor:
        return self.reconstruct(logmel)[0]
