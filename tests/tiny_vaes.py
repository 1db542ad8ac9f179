"""Tiny diffusers VAEs written to local folders, each standing in for the configs/autoencoder/ file of its
family (real diffusers classes and real save_pretrained folders, random weights, seconds to build)."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from opensora_lite.config.schema import AutoencoderConfig
from opensora_lite.layout import config_dir

WAN22_MEAN, WAN22_STD = [0.01 * i for i in range(48)], [1.0 + 0.02 * i for i in range(48)]
LTX_MEAN, LTX_STD = torch.linspace(-0.5, 0.5, 8), torch.linspace(0.5, 2.0, 8)


def _build(name: str):
    from diffusers import AutoencoderKLHunyuanVideo15, AutoencoderKLLTXVideo, AutoencoderKLWan

    torch.manual_seed(0)
    if name == "wan22":  # patch 2 and residual blocks: 4x16x16 into 48 channels
        return AutoencoderKLWan(
            base_dim=8, z_dim=48, dim_mult=[1, 1, 1, 1], num_res_blocks=1, is_residual=True, patch_size=2,
            in_channels=12, out_channels=12, latents_mean=WAN22_MEAN, latents_std=WAN22_STD,
            scale_factor_spatial=16,
        )  # fmt: skip
    if name == "ltx":  # causal 8x32x32, its per-channel statistics stored as buffers
        vae = AutoencoderKLLTXVideo(
            latent_channels=8, block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
            layers_per_block=(1,) * 5, decoder_layers_per_block=(1,) * 5,
        )  # fmt: skip
        vae.latents_mean.copy_(LTX_MEAN)
        vae.latents_std.copy_(LTX_STD)
        return vae
    if name == "hunyuan15":  # causal 4x16x16, 8 channels
        return AutoencoderKLHunyuanVideo15(latent_channels=8, block_out_channels=(16,) * 5, layers_per_block=1)
    raise ValueError(name)


def tiny_vae_folder(name: str, folder: Path):
    """(the tiny VAE, configs/autoencoder/<name>.yaml pointing at its folder in fp32 without tiling)."""
    vae = _build(name)
    vae.save_pretrained(folder)
    yaml = OmegaConf.load(config_dir() / "autoencoder" / f"{name}.yaml")
    cfg: AutoencoderConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(AutoencoderConfig), yaml))
    cfg.path, cfg.dtype, cfg.tiling = str(folder), "fp32", False
    cfg.latent_channels = 48 if name == "wan22" else 8
    return vae, cfg
