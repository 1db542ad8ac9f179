"""The autoencoder interface: video in [-1, 1] <-> scaled latents the diffusion model works in."""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor, nn


class Autoencoder(nn.Module, ABC):
    """Encode [B, 3, T, H, W] video in [-1, 1] to scaled latents [B, C, T', H/s, W/s] and back.

    Causal autoencoders (Hunyuan, Wan) map 1 + 4k frames to 1 + k latent frames and encode a single
    image as one latent frame; non-causal ones need T divisible by the temporal factor.
    """

    latent_channels: int
    spatial_factor: int
    temporal_factor: int
    causal: bool

    @abstractmethod
    def encode(self, video: Tensor) -> Tensor: ...

    @abstractmethod
    def decode(self, latents: Tensor) -> Tensor: ...

    def latent_frames(self, num_frames: int) -> int:
        if not self.valid_num_frames(num_frames):
            raise ValueError(f"{type(self).__name__} cannot encode {num_frames} frames")
        if self.causal:
            return 1 + (num_frames - 1) // self.temporal_factor
        return num_frames // self.temporal_factor

    def valid_num_frames(self, num_frames: int) -> bool:
        if num_frames < 1:
            return False
        if self.causal:
            return (num_frames - 1) % self.temporal_factor == 0
        return num_frames % self.temporal_factor == 0
