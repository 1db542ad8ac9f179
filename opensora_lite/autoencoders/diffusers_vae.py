"""Video VAEs from diffusers (Hunyuan, Wan 2.1/2.2, LTX-Video), frozen, loaded from local diffusers folders only."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from opensora_lite.autoencoders.base import Autoencoder
from opensora_lite.config.schema import AutoencoderConfig
from opensora_lite.dtypes import DTYPES
from opensora_lite.errors import CheckpointError

_DECODER_PARTS = ("post_quant_conv", "decoder")  # what decode() runs; encode() never touches them


def _vae_class(kind: str):
    import diffusers

    classes = {
        "hunyuan": "AutoencoderKLHunyuanVideo",
        "wan": "AutoencoderKLWan",
        "ltx": "AutoencoderKLLTXVideo",
        "hunyuan15": "AutoencoderKLHunyuanVideo15",
    }
    return getattr(diffusers, classes[kind])


# Tiny architectures of two families (4 latent channels, causal 4x in time; Hunyuan 4x, Wan 8x in space),
# for tests and the benchmarks' --smoke runs
TINY_ARCHITECTURES = {
    "hunyuan": dict(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 3,
        up_block_types=("HunyuanVideoUpBlock3D",) * 3,
        block_out_channels=(8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        spatial_compression_ratio=4,
        temporal_compression_ratio=4,
        mid_block_add_attention=False,
    ),
    "wan": dict(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1),
}


def random_vae(kind: str, tiny: bool = False, **changes) -> nn.Module:
    """A diffusers VAE of `kind` with random weights (global RNG, current default device): diffusers'
    default architecture, which is the released one for hunyuan, hunyuan15, wan (2.1) and ltx, or a tiny
    one of TINY_ARCHITECTURES; `changes` override constructor arguments."""
    return _vae_class(kind)(**{**(TINY_ARCHITECTURES[kind] if tiny else {}), **changes})


def _load(cfg: AutoencoderConfig) -> nn.Module:
    path = Path(cfg.path) if cfg.path else None
    if path is None or not path.exists():
        raise CheckpointError(f"autoencoder.path: {cfg.path!r} does not exist (weights load from local folders only)")
    if not path.is_dir():
        raise CheckpointError(
            f"autoencoder.path: {path} is a file; give the diffusers folder holding config.json and "
            "diffusion_pytorch_model.safetensors (docs/encoders.md)"
        )
    if not (path / "config.json").is_file():
        raise CheckpointError(f"autoencoder.path: {path} has no config.json (a diffusers model folder)")
    if not any(path.glob("diffusion_pytorch_model*")):
        raise CheckpointError(f"autoencoder.path: {path} has no weights (diffusion_pytorch_model.safetensors)")
    try:
        return _vae_class(cfg.kind).from_pretrained(path, torch_dtype=DTYPES[cfg.dtype], local_files_only=True)
    except OSError as e:  # unreadable weights
        detail = " ".join(str(e).split())
        raise CheckpointError(f"autoencoder.path: cannot load a {cfg.kind} VAE from {path}: {detail}") from e


def _geometry(kind: str, vae: nn.Module) -> tuple[int, int, int]:
    """(latent channels, spatial factor, temporal factor) of a diffusers video VAE."""
    c = vae.config
    if kind == "wan":
        return c.z_dim, 2 ** (len(c.dim_mult) - 1) * (c.patch_size or 1), 2 ** sum(c.temperal_downsample)
    if kind == "ltx":
        return c.latent_channels, vae.spatial_compression_ratio, vae.temporal_compression_ratio
    return c.latent_channels, c.spatial_compression_ratio, c.temporal_compression_ratio


class DiffusersVideoVAE(Autoencoder):
    """Hunyuan (4x8x8, 16 channels, (z - shift) * 0.476986) or Wan 2.1 (4x8x8, 16 channels, per-channel
    (z - mean) / std with the statistics in the VAE's config) VAE, frozen.

    `cfg.tiling` turns on diffusers' spatial tiling (tiles of `vae.tile_sample_min_height/width` pixels).
    `cfg.offload_decoder` keeps the decoder on the CPU: `.to(device)` moves the encoder only, and
    `decode()` borrows the device for the call, so training never holds the decoder's weights.
    """

    def __init__(self, cfg: AutoencoderConfig, vae: nn.Module | None = None):
        super().__init__()
        self.offload_decoder = False  # set below, once the parts are on the CPU
        vae = _load(cfg) if vae is None else vae
        got = _geometry(cfg.kind, vae)
        want = (cfg.latent_channels, cfg.spatial_factor, cfg.temporal_factor)
        if got != want:
            raise CheckpointError(
                f"autoencoder: the {cfg.kind} VAE has (latent_channels, spatial_factor, temporal_factor) {got}, "
                f"the config says {want}"
            )
        if any(p.dtype != DTYPES[cfg.dtype] for p in vae.parameters()):  # (diffusers warns on any to(dtype))
            vae = vae.to(DTYPES[cfg.dtype])
        self.vae = vae.requires_grad_(False).eval()
        if cfg.tiling:
            self.vae.enable_tiling()
        self.kind = cfg.kind
        self.latent_channels = cfg.latent_channels
        self.spatial_factor, self.temporal_factor, self.causal = cfg.spatial_factor, cfg.temporal_factor, cfg.causal
        self.scaling_factor, self.shift_factor = cfg.scaling_factor, cfg.shift_factor
        if cfg.kind == "wan":  # Wan normalises each channel with statistics stored in its config
            c = self.vae.config
            self.register_buffer("mean", torch.tensor(c.latents_mean).view(1, -1, 1, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(c.latents_std).view(1, -1, 1, 1, 1), persistent=False)
        for part in self._decoder_parts() if cfg.offload_decoder else ():
            part.to("cpu")
        self.offload_decoder = cfg.offload_decoder

    def _decoder_parts(self) -> list[nn.Module]:
        return [m for name in _DECODER_PARTS if (m := getattr(self.vae, name, None)) is not None]

    def _apply(self, fn, recurse=True):
        """Module.to/cuda/half/...: with offload_decoder, dtype changes reach the decoder, device moves do not."""
        if not (recurse and getattr(self, "offload_decoder", False)):
            return super()._apply(fn, recurse)
        parked = self._decoder_parts()
        for child in self.vae.children():
            if all(child is not p for p in parked):
                child._apply(fn)
        self.vae._apply(fn, recurse=False)
        super()._apply(fn, recurse=False)  # the wrapper's own buffers (Wan's mean/std)
        for part in parked:  # what fn would make of a float tensor, without moving anything
            param = next(part.parameters(), None)
            if param is not None:
                part.to(dtype=fn(torch.empty(0, dtype=param.dtype)).dtype)
        return self

    def train(self, mode: bool = True) -> "DiffusersVideoVAE":
        return super().train(False)  # always frozen

    def _norm(self, z: Tensor) -> Tensor:
        if self.kind == "ltx":  # per-channel statistics stored with the weights (buffers), as LTX's pipeline
            return (
                (z - self.vae.latents_mean.view(1, -1, 1, 1, 1).to(z))
                / self.vae.latents_std.view(1, -1, 1, 1, 1).to(z)
                * self.scaling_factor
            )
        if self.kind == "wan":
            return (z - self.mean.to(z)) / self.std.to(z)
        return (z - self.shift_factor) * self.scaling_factor

    def _denorm(self, z: Tensor) -> Tensor:
        if self.kind == "ltx":
            std = self.vae.latents_std.view(1, -1, 1, 1, 1).to(z)
            return z / self.scaling_factor * std + self.vae.latents_mean.view(1, -1, 1, 1, 1).to(z)
        if self.kind == "wan":
            return z * self.std.to(z) + self.mean.to(z)
        return z / self.scaling_factor + self.shift_factor

    @torch.no_grad()
    def encode(self, video: Tensor, sample: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """Video [B, 3, T, H, W] in [-1, 1] -> scaled latents [B, C, T', H/s, W/s], float32.

        sample=True (training) draws z = mean + std * eps from the posterior, eps from `generator` (a
        generator on the CPU or on the video's device; None: the global RNG). sample=False returns the
        posterior mean: deterministic, what a latent cache or a comparison wants.
        """
        self.check_video(video)
        dtype = next(self.vae.encoder.parameters()).dtype
        posterior = self.vae.encode(video.to(dtype)).latent_dist
        z = posterior.sample(generator) if sample else posterior.mode()
        return self._norm(z.float())

    @torch.no_grad()
    def decode(self, latents: Tensor, num_frames: int | None = None) -> Tensor:
        """Scaled latents -> video [B, 3, T, H, W], float32 (values near [-1, 1]; Wan clamps to it).
        Causal: T' latent frames are always 1 + k(T' - 1) frames; `num_frames` is only checked."""
        self.decoded_frames(latents.shape[2], num_frames)
        parts = self._decoder_parts() if self.offload_decoder else []
        for part in parts:
            part.to(latents.device)
        try:
            dtype = next(self.vae.decoder.parameters()).dtype
            return self.vae.decode(self._denorm(latents.float()).to(dtype)).sample.float()
        finally:
            for part in parts:
                part.to("cpu")
