"""Autoencoders: one interface per stream (base.Autoencoder for video, audio.AudioAutoencoder for sound),
one file per family. Kinds: registry.AUTOENCODER_KINDS, registry.AUDIO_AUTOENCODER_KINDS."""

from __future__ import annotations

from opensora_lite.autoencoders.base import Autoencoder
from opensora_lite.config.schema import AutoencoderConfig
from opensora_lite.registry import AUTOENCODER_KINDS

KINDS = AUTOENCODER_KINDS


def build_autoencoder(cfg: AutoencoderConfig) -> Autoencoder:
    if cfg.kind == "pixel":
        from opensora_lite.autoencoders.pixel import PixelSpaceToDepth

        return PixelSpaceToDepth(cfg.spatial_factor, cfg.scaling_factor, cfg.shift_factor)
    if cfg.kind in ("hunyuan", "hunyuan15", "wan", "ltx"):
        from opensora_lite.autoencoders.diffusers_vae import DiffusersVideoVAE

        return DiffusersVideoVAE(cfg)
    if cfg.kind == "dc_ae":
        from opensora_lite.autoencoders.dc_ae import VideoDCAE

        return VideoDCAE(cfg)
    raise ValueError(f"autoencoder.kind: unknown {cfg.kind!r}; choose from {KINDS}")
