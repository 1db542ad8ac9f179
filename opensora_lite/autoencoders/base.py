"""The autoencoder interface: video in [-1, 1] <-> scaled latents the diffusion model works in."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn


def frames_fit(num_frames: int, temporal_factor: int, causal: bool) -> bool:
    """The frame rule, one for the interface and for config validation: a causal autoencoder takes
    1 + k*t frames; a non-causal one takes a single image or a multiple of t frames."""
    if num_frames < 1:
        return False
    if causal:
        return (num_frames - 1) % temporal_factor == 0
    return num_frames == 1 or num_frames % temporal_factor == 0


def latent_frame_count(num_frames: int, temporal_factor: int, causal: bool) -> int:
    if causal:
        return 1 + (num_frames - 1) // temporal_factor
    return 1 if num_frames == 1 else num_frames // temporal_factor


def pixel_frame_count(latent_frames: int, temporal_factor: int, causal: bool) -> int:
    """The video frames whose encoding has `latent_frames` latent frames (a video, not an image:
    one latent frame of a non-causal autoencoder is then `temporal_factor` frames)."""
    if causal:
        return 1 + (latent_frames - 1) * temporal_factor
    return latent_frames * temporal_factor


def frame_rule(temporal_factor: int, causal: bool) -> str:
    k = temporal_factor
    return f"causal: 1 + {k}k frames" if causal else f"1 or a multiple of {k} frames"


class Autoencoder(nn.Module, ABC):
    """Encode [B, 3, T, H, W] video in [-1, 1] to scaled latents [B, C, T', H/s, W/s] and back.

    Causal autoencoders (Hunyuan, Wan) map 1 + 4k frames to 1 + k latent frames and encode a single
    image as one latent frame; non-causal ones (DC-AE) take one image or T divisible by the temporal factor.
    A non-causal autoencoder maps both an image and a 4-frame clip to one latent frame, so `decode`
    takes the frame count wanted (`num_frames`) to tell them apart.
    """

    latent_channels: int
    spatial_factor: int
    temporal_factor: int
    causal: bool

    @abstractmethod
    def encode(self, video: Tensor, sample: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """Scaled latents of `video`. A VAE draws from its posterior when `sample`, else returns its mean;
        a deterministic autoencoder ignores both arguments."""

    @abstractmethod
    def decode(self, latents: Tensor, num_frames: int | None = None) -> Tensor:
        """Video [B, 3, num_frames, H, W] of scaled latents [B, C, T', h, w]. `num_frames` must encode to
        T' latent frames (ValueError otherwise); None: one latent frame is an image, T' > 1 a video."""

    def decoded_frames(self, latent_frames: int, num_frames: int | None = None) -> int:
        """The frame count `decode` returns for `latent_frames` latent frames and the `num_frames` asked
        for (None: 1 for one latent frame, else the video's count); ValueError if they do not fit."""
        if num_frames is None:
            if latent_frames == 1:
                return 1
            return pixel_frame_count(latent_frames, self.temporal_factor, self.causal)
        if not self.valid_num_frames(num_frames) or self.latent_frames(num_frames) != latent_frames:
            raise ValueError(
                f"{type(self).__name__} cannot decode {latent_frames} latent frames into {num_frames} frames "
                f"({self._frame_rule()})"
            )
        return num_frames

    def latent_frames(self, num_frames: int) -> int:
        if not self.valid_num_frames(num_frames):
            raise ValueError(f"{type(self).__name__} cannot encode {num_frames} frames ({self._frame_rule()})")
        return latent_frame_count(num_frames, self.temporal_factor, self.causal)

    def valid_num_frames(self, num_frames: int) -> bool:
        return frames_fit(num_frames, self.temporal_factor, self.causal)

    def _frame_rule(self) -> str:
        return frame_rule(self.temporal_factor, self.causal)

    def check_video(self, video: Tensor) -> None:
        """Raise ValueError unless `video` is [B, 3, T, H, W] with a valid T and H, W divisible by the factor."""
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"{type(self).__name__} encodes video [B, 3, T, H, W], got shape {tuple(video.shape)}")
        t, h, w = video.shape[2:]
        self.latent_frames(t)
        s = self.spatial_factor
        if h % s or w % s:
            raise ValueError(f"{type(self).__name__}: frame size {h}x{w} is not divisible by the spatial factor {s}")
