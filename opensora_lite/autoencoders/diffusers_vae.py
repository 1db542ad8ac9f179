"""Video VAEs from diffusers (Hunyuan, Wan), frozen, loaded from local files only."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from opensora_lite.autoencoders.base import Autoencoder
from opensora_lite.config.schema import AutoencoderConfig

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _vae_class(kind: str):
    import diffusers

    return {"hunyuan": diffusers.AutoencoderKLHunyuanVideo, "wan": diffusers.AutoencoderKLWan}[kind]


class DiffusersVideoVAE(Autoencoder):
    """Hunyuan (4x8x8, 16 channels, scale 0.476986) or Wan (4x8x8, per-channel mean/std) VAE."""

    def __init__(self, cfg: AutoencoderConfig, vae: torch.nn.Module | None = None):
        super().__init__()
        if vae is None:
            if not cfg.path or not Path(cfg.path).exists():
                raise FileNotFoundError(
                    f"autoencoder.path: {cfg.path!r} does not exist (weights load from local paths only)"
                )
            cls = _vae_class(cfg.kind)
            path = Path(cfg.path)
            vae = cls.from_pretrained(path) if path.is_dir() else cls.from_single_file(str(path))
        self.vae = vae.to(_DTYPES[cfg.dtype]).requires_grad_(False).eval()
        if cfg.tiling and hasattr(self.vae, "enable_tiling"):
            self.vae.enable_tiling()
        self.kind = cfg.kind
        self.latent_channels = cfg.latent_channels
        self.spatial_factor, self.temporal_factor, self.causal = cfg.spatial_factor, cfg.temporal_factor, cfg.causal
        self.scaling_factor, self.shift_factor = cfg.scaling_factor, cfg.shift_factor
        if cfg.kind == "wan":  # Wan normalises each channel with statistics stored in its config
            c = self.vae.config
            self.register_buffer("mean", torch.tensor(c.latents_mean).view(1, -1, 1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(c.latents_std).view(1, -1, 1, 1, 1), persistent=False)

    def _norm(self, z: Tensor) -> Tensor:
        if self.kind == "wan":
            return (z - self.mean.to(z)) / self.std.to(z)
        return (z - self.shift_factor) * self.scaling_factor

    def _denorm(self, z: Tensor) -> Tensor:
        if self.kind == "wan":
            return z * self.std.to(z) + self.mean.to(z)
        return z / self.scaling_factor + self.shift_factor

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        dtype = next(self.vae.parameters()).dtype
        z = self.vae.encode(video.to(dtype)).latent_dist.sample()
        return self._norm(z.float())

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        dtype = next(self.vae.parameters()).dtype
        return self.vae.decode(self._denorm(latents).to(dtype)).sample.float()
