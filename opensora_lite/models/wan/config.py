"""The `model` config of family wan: Wan 2.1 / 2.2 (diffusers' WanTransformer3DModel), text-to-video.

Field names are diffusers' (transformer/config.json of a Wan-AI/*-Diffusers folder), except
`latent_channels`, the framework's name for in_channels = out_channels. Left out on purpose: the I2V
inputs (image_dim, added_kv_proj_dim, pos_embed_seq_len: Wan's image cross-attention is not supported
yet) and qk_norm (diffusers builds the same RMS norm across heads whatever it says).
Imports nothing heavy, so the config layer can read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

ATTENTION_BACKENDS = ("auto", "sdpa", "flash2", "flash3", "math")


@dataclass
class WanConfig:
    """Architecture of a Wan transformer. The defaults are Wan 2.1 T2V 1.3B."""

    family: str = "wan"
    latent_channels: int = 16  # in and out channels: the autoencoder's latent (Wan 2.1 VAE 16, Wan 2.2 VAE 48)
    patch_size: List[int] = field(default_factory=lambda: [1, 2, 2])  # (t, h, w) patch over latents
    num_attention_heads: int = 12
    attention_head_dim: int = 128
    text_dim: int = 4096  # T5 token width (UMT5-XXL: 4096)
    freq_dim: int = 256  # sinusoidal timestep embedding width
    ffn_dim: int = 8960
    num_layers: int = 30
    cross_attn_norm: bool = True  # affine LayerNorm before the cross-attention
    eps: float = 1e-6
    rope_max_seq_len: int = 1024  # RoPE table length per axis: latent frames and h, w tokens stay below it
    # auto and sdpa: torch SDPA (its own flash / cuDNN kernels on GPUs); flash2 / flash3: the flash-attn
    # packages through diffusers' attention dispatch; math: the unfused reference (tests)
    attention_backend: str = "auto"

    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def patch_dim(self) -> int:
        pt, ph, pw = self.patch_size
        return self.latent_channels * pt * ph * pw
