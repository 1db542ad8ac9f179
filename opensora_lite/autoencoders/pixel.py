"""A lossless "autoencoder": space-to-depth over pixels. The tiny curriculum's stand-in for a VAE.

It has the same interface and shape contract as a real one (channels up, space down by `factor`), so
every code path the real recipe uses runs, with no weights to download and nothing to learn.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from opensora_lite.autoencoders.base import Autoencoder


class PixelSpaceToDepth(Autoencoder):
    def __init__(self, factor: int = 2, scaling_factor: float = 1.0, shift_factor: float = 0.0):
        super().__init__()
        self.factor = factor
        self.scaling_factor = scaling_factor
        self.shift_factor = shift_factor
        self.latent_channels = 3 * factor * factor
        self.spatial_factor = factor
        self.temporal_factor = 1
        self.causal = False

    def encode(self, video: Tensor, sample: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """Exact and deterministic: `sample` and `generator` are accepted for the interface and ignored."""
        self.check_video(video)
        f = self.factor
        z = rearrange(video, "b c t (h f1) (w f2) -> b (c f1 f2) t h w", f1=f, f2=f)
        return (z - self.shift_factor) * self.scaling_factor

    def decode(self, latents: Tensor, num_frames: int | None = None) -> Tensor:
        self.decoded_frames(latents.shape[2], num_frames)  # checks num_frames: time is not compressed
        f = self.factor
        z = latents / self.scaling_factor + self.shift_factor
        return rearrange(z, "b (c f1 f2) t h w -> b c t (h f1) (w f2)", f1=f, f2=f)
