"""Autoencoders: one interface (base.Autoencoder), one file per family."""

from __future__ import annotations

from opensora_lite.autoencoders.base import Autoencoder
from opensora_lite.config.schema import AutoencoderConfig

KINDS = ("pixel", "hunyuan", "hunyuan15", "wan", "ltx", "dc_ae")


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
