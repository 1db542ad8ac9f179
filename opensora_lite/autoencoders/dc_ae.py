"""Open-Sora 2.0's Video DC-AE: non-causal 4x32x32 compression into 128 channels (dc-ae-f32t4c128).

The module tree carries Open-Sora's parameter names, so the released `F32T4C128_AE.safetensors` loads
strictly without renaming. Long or large clips are encoded and decoded in overlapping tiles (time,
then height, then width), blended linearly over the overlap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from opensora_lite.autoencoders.base import Autoencoder
from opensora_lite.autoencoders.dc_ae_blocks import Decoder, Encoder, init_weights
from opensora_lite.config.schema import AutoencoderConfig
from opensora_lite.dtypes import DTYPES
from opensora_lite.errors import CheckpointError


def _check_arch(cfg: AutoencoderConfig) -> None:
    a = cfg.dc_ae
    n = len(a.widths)
    for name in ("encoder_depths", "decoder_depths", "blocks", "temporal"):
        if len(getattr(a, name)) != n:
            raise ValueError(f"autoencoder.dc_ae.{name}: needs {n} entries (one per width)")
    if cfg.spatial_factor != 2 ** (n - 1) or cfg.temporal_factor != 2 ** sum(a.temporal[:-1]):
        raise ValueError(
            f"autoencoder.spatial_factor/temporal_factor: {n} stages with temporal {list(a.temporal)} give "
            f"{2 ** (n - 1)} and {2 ** sum(a.temporal[:-1])}, the config says {cfg.spatial_factor} and "
            f"{cfg.temporal_factor}"
        )
    if cfg.causal:
        raise ValueError("autoencoder.causal: the DC-AE is not causal")


def _tiled(fn: Callable[[Tensor], Tensor], x: Tensor, dim: int, tile: int, stride: int, least: int = 1) -> Tensor:
    """fn over overlapping tiles of x along `dim` (tile and stride in x's units; fn may change the
    length by a fixed factor, as encoding and decoding do).

    Tiles start every `stride` until one reaches the end; each later tile's first `overlap` outputs
    are blended linearly with the end of the previous (already blended) tile; every tile but the last
    is cut to `stride` outputs, the last is kept whole. A last tile shorter than `least` is merged into
    the one before, which then runs to the end (in time: no tile is a lone latent frame).
    """
    n = x.shape[dim]
    if n <= tile:
        return fn(x)
    starts = [0]
    while starts[-1] + tile < n:
        starts.append(starts[-1] + stride)
    if n - starts[-1] < least:
        starts.pop()
    ends = [s + tile for s in starts[:-1]] + [n]
    outs = [fn(x.narrow(dim, s, e - s)) for s, e in zip(starts, ends)]
    ratio = outs[0].shape[dim] / (ends[0] - starts[0])  # output units per input unit
    out_stride = round(stride * ratio)
    blend = outs[0].shape[dim] - out_stride
    w = torch.arange(blend, device=x.device, dtype=outs[0].dtype) / blend
    w = w.view([-1 if d == dim % x.ndim else 1 for d in range(x.ndim)])
    pieces = []
    for k, cur in enumerate(outs):
        if k > 0 and blend > 0:
            prev = outs[k - 1]
            head = prev.narrow(dim, prev.shape[dim] - blend, blend) * (1 - w) + cur.narrow(dim, 0, blend) * w
            cur = torch.cat([head, cur.narrow(dim, blend, cur.shape[dim] - blend)], dim=dim)
            outs[k] = cur
        pieces.append(cur if k == len(outs) - 1 else cur.narrow(dim, 0, out_stride))
    return torch.cat(pieces, dim=dim)


class VideoDCAE(Autoencoder):
    """The DC-AE behind the interface: deterministic (encode ignores `sample`), frozen, tiled when
    `cfg.tiling` and the clip exceeds a tile. Scaled latents are `(z - shift_factor) * scaling_factor`.

    `autoencoder.path` is the released `.safetensors` file or a folder holding one; without a path
    the weights are initialised as Open-Sora does from scratch (seeded: every build is identical).
    """

    def __init__(self, cfg: AutoencoderConfig, device: torch.device | str | None = None):
        super().__init__()
        _check_arch(cfg)
        a = cfg.dc_ae
        self.latent_channels, self.spatial_factor, self.temporal_factor = (
            cfg.latent_channels,
            cfg.spatial_factor,
            cfg.temporal_factor,
        )
        self.causal = False
        self.scaling_factor, self.shift_factor = cfg.scaling_factor, cfg.shift_factor
        self.tiling = cfg.tiling
        lat_t, lat_s = a.tile_frames // cfg.temporal_factor, a.tile_size // cfg.spatial_factor
        # (input tile, input stride) in latent units; overlap rounds to whole latents
        self.tiles_t = (lat_t, lat_t - int(lat_t * a.tile_overlap))
        self.tiles_s = (lat_s, lat_s - int(lat_s * a.tile_overlap))
        arch = (a.widths, a.encoder_depths, a.blocks, a.temporal, cfg.latent_channels, a.head_dim)
        meta = cfg.path is not None or device == "meta"
        with torch.device("meta" if meta else "cpu"):
            self.encoder = Encoder(*arch)
            self.decoder = Decoder(a.widths, a.decoder_depths, *arch[2:])
        if cfg.path is not None:
            self.load_state_dict(_read(cfg.path), strict=True, assign=True)
        elif not meta:
            with torch.random.fork_rng(devices=[]):  # seeded without touching the global RNG
                torch.manual_seed(0)
                init_weights(self)
        self.to(DTYPES[cfg.dtype]).requires_grad_(False).eval()

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if strict:
            want = self.state_dict()
            missing = sorted(set(want) - set(state_dict))
            unexpected = sorted(set(state_dict) - set(want))
            shapes = [k for k in want if k in state_dict and tuple(state_dict[k].shape) != tuple(want[k].shape)]
            if missing or unexpected or shapes:
                raise CheckpointError(
                    f"autoencoder.path: the weights do not fit dc_ae (autoencoder.dc_ae): {len(missing)} missing "
                    f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, {len(shapes)} of another "
                    f"shape {shapes[:3]}"
                )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def train(self, mode: bool = True) -> "VideoDCAE":
        return super().train(False)  # frozen

    def _dtype(self) -> torch.dtype:
        return self.encoder.project_in.conv.weight.dtype

    def _encode_tiles(self, x: Tensor) -> Tensor:
        f, s = self.temporal_factor, self.spatial_factor
        (tt, st), (ts, ss) = self.tiles_t, self.tiles_s

        def space(v: Tensor) -> Tensor:
            def rows(r: Tensor) -> Tensor:
                return _tiled(self.encoder, r, -1, ts * s, ss * s)

            return _tiled(rows, v, -2, ts * s, ss * s)

        if not self.tiling:
            return self.encoder(x)
        return _tiled(space, x, 2, tt * f, st * f, least=2 * f)

    def _decode_tiles(self, z: Tensor, image: bool) -> Tensor:
        (tt, st), (ts, ss) = self.tiles_t, self.tiles_s

        def decoder(v: Tensor) -> Tensor:
            return self.decoder(v, image)

        def space(v: Tensor) -> Tensor:
            def rows(r: Tensor) -> Tensor:
                return _tiled(decoder, r, -1, ts, ss)

            return _tiled(rows, v, -2, ts, ss)

        if not self.tiling:
            return decoder(z)
        return _tiled(space, z, 2, tt, st, least=2)

    def reconstruct(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """(reconstruction, raw latents) with gradients, untiled and unscaled: what an autoencoder stage
        trains and evaluates. As many frames as `video` (a 4-frame clip too, though it is one latent frame)."""
        z = self.encoder(video.to(self._dtype()))
        return self.decoder(z, video.shape[2] == 1).float(), z.float()

    def forward(self, video: Tensor) -> Tensor:
        return self.reconstruct(video)[0]

    @torch.no_grad()
    def encode(self, video: Tensor, sample: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """Video [B, 3, T, H, W] in [-1, 1], T = 1 or a multiple of 4 -> scaled latents, float32.
        Deterministic: `sample` and `generator` are accepted for the interface and ignored."""
        self.check_video(video)
        z = self._encode_tiles(video.to(self._dtype())).float()
        return (z - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: Tensor, num_frames: int | None = None) -> Tensor:
        """Scaled latents [B, C, T', h, w] -> video [B, 3, T, H, W], float32: T = 4T', or 1 for an image.
        One latent frame is an image unless `num_frames` says 4 (a 4-frame clip encodes to it too)."""
        image = self.decoded_frames(latents.shape[2], num_frames) == 1
        z = latents.float() / self.scaling_factor + self.shift_factor
        return self._decode_tiles(z.to(self._dtype()), image).float()


def _read(path_str: str) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path_str)
    if not path.exists():
        raise CheckpointError(f"autoencoder.path: {path_str!r} does not exist (weights load from local files only)")
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if len(files) != 1:
            raise CheckpointError(
                f"autoencoder.path: {path} holds {len(files)} .safetensors files; give the DC-AE weights file "
                "(F32T4C128_AE.safetensors) or a folder with exactly one"
            )
        path = files[0]
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"autoencoder.path: cannot read {path} as safetensors: {e}") from e
