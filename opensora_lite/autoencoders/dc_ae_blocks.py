"""Building blocks of Open-Sora 2.0's Video DC-AE (deep compression autoencoder).

Attribute names follow Open-Sora's module tree (`conv`, `norm`, `main`, `op_list`, `qkv`, `aggreg`, ...)
so that the released weights load without renaming; the code itself is written here.
Every convolution is 3D and non-causal (zero padding on both sides in time).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ChannelRMSNorm(nn.Module):
    """RMS normalisation over the channel axis of [B, C, T, H, W], with a per-channel scale and bias."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        rms = torch.sqrt(x.float().square().mean(dim=1, keepdim=True) + self.eps)
        x = (x / rms).to(x.dtype)
        return x * self.weight.view(1, -1, 1, 1, 1) + self.bias.view(1, -1, 1, 1, 1)


class Conv(nn.Module):
    """3D convolution ("same" zero padding), then an optional channel RMSNorm and activation."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int = 3,
        stride: tuple[int, int, int] = (1, 1, 1),
        groups: int = 1,
        bias: bool = True,
        norm: bool = False,
        act: nn.Module | None = None,
    ):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=bias)
        self.norm = ChannelRMSNorm(cout) if norm else None
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return self.act(x) if self.act is not None else x


class Residual(nn.Module):
    """main(x) + shortcut(x); the shortcut is the identity or a parameter-free resampling."""

    def __init__(self, main: nn.Module, shortcut: nn.Module | None = None):
        super().__init__()
        self.main = main
        self.shortcut = shortcut if shortcut is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x) + self.shortcut(x)


class Resample(Residual):
    """A resampling Residual whose two branches are told whether the clip is a single image (which is
    never resampled in time); `image=None`: a single frame is an image."""

    def forward(self, x: Tensor, image: bool | None = None) -> Tensor:
        return self.main(x, image) + self.shortcut(x, image)


def _time(time: bool, x: Tensor, image: bool | None) -> bool:
    """Whether a temporal resampling acts on x: not on an image (by default: not on a single frame)."""
    return time and not (x.shape[2] == 1 if image is None else image)


class Sequence(nn.Module):
    """Modules applied in order, held as `op_list` (Open-Sora's name)."""

    def __init__(self, ops: list[nn.Module]):
        super().__init__()
        self.op_list = nn.ModuleList(ops)

    def forward(self, x: Tensor) -> Tensor:
        for op in self.op_list:
            x = op(x)
        return x


class ConvPair(nn.Module):
    """The residual conv block: conv (bias) + SiLU, conv (no bias) + RMSNorm."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = Conv(ch, ch, 3, bias=True, act=nn.SiLU())
        self.conv2 = Conv(ch, ch, 3, bias=False, norm=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1(x))


class LinearAttention(nn.Module):
    """EfficientViT's multi-scale ReLU linear attention over all T*H*W positions.

    1x1 conv to q, k, v per head; a second set from a depthwise 5x5x5 + grouped 1x1 branch (the
    multi-scale aggregation); ReLU kernels; attention as (v k^T) q with a ones row for the normaliser.
    """

    def __init__(self, ch: int, head_dim: int = 32, scales: tuple[int, ...] = (5,), eps: float = 1e-15):
        super().__init__()
        self.head_dim, self.eps = head_dim, eps
        heads = ch // head_dim
        qkv = 3 * heads * head_dim
        self.qkv = Conv(ch, qkv, 1, bias=False)
        self.aggreg = nn.ModuleList(
            nn.Sequential(
                nn.Conv3d(qkv, qkv, s, padding=s // 2, groups=qkv, bias=False),
                nn.Conv3d(qkv, qkv, 1, groups=3 * heads, bias=False),
            )
            for s in scales
        )
        self.proj = Conv(heads * head_dim * (1 + len(scales)), ch, 1, bias=False, norm=True)

    def _attend(self, qkv: Tensor) -> Tensor:
        b, _, t, h, w = qkv.shape
        if qkv.dtype == torch.float16:
            qkv = qkv.float()
        qkv = qkv.reshape(b, -1, 3 * self.head_dim, t * h * w)
        q, k, v = qkv.split(self.head_dim, dim=2)
        q, k = F.relu(q), F.relu(k)
        v = F.pad(v, (0, 0, 0, 1), value=1.0)  # the extra row sums the kernel weights: the normaliser
        out = (v @ k.transpose(-1, -2)) @ q
        out = out.float()
        out = out[:, :, :-1] / (out[:, :, -1:] + self.eps)
        return out.reshape(b, -1, t, h, w)

    def forward(self, x: Tensor) -> Tensor:
        qkv = self.qkv(x)
        qkv = torch.cat([qkv] + [branch(qkv) for branch in self.aggreg], dim=1)
        with torch.autocast(device_type=qkv.device.type, enabled=False):
            out = self._attend(qkv).to(qkv.dtype)
        return self.proj(out)


class GLUMBConv(nn.Module):
    """Gated inverted bottleneck: 1x1 expand (SiLU), depthwise 3x3x3, x * SiLU(gate), 1x1 project + RMSNorm."""

    def __init__(self, ch: int, expand: int = 4):
        super().__init__()
        mid = ch * expand
        self.inverted_conv = Conv(ch, 2 * mid, 1, bias=True, act=nn.SiLU())
        self.depth_conv = Conv(2 * mid, 2 * mid, 3, groups=2 * mid, bias=True)
        self.point_conv = Conv(mid, ch, 1, bias=False, norm=True)

    def forward(self, x: Tensor) -> Tensor:
        x, gate = self.depth_conv(self.inverted_conv(x)).chunk(2, dim=1)
        return self.point_conv(x * F.silu(gate))


class EfficientViTBlock(nn.Module):
    """Global context (linear attention) then local mixing (GLU MBConv), each residual."""

    def __init__(self, ch: int, head_dim: int = 32):
        super().__init__()
        self.context_module = Residual(LinearAttention(ch, head_dim))
        self.local_module = Residual(GLUMBConv(ch))

    def forward(self, x: Tensor) -> Tensor:
        return self.local_module(self.context_module(x))


def block(kind: str, ch: int, head_dim: int) -> nn.Module:
    if kind == "res":
        return Residual(ConvPair(ch))
    if kind == "evit":
        return EfficientViTBlock(ch, head_dim)
    raise ValueError(f"autoencoder.dc_ae.blocks: unknown {kind!r} (res | evit)")


def _space_to_channels(x: Tensor, time: bool) -> Tensor:
    """[B, C, T, H, W] -> [B, C*r, T/rt, H/2, W/2]; channel order c, (t), h, w offsets."""
    b, c, t, h, w = x.shape
    if time:
        x = x.view(b, c, t // 2, 2, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 7, 2, 4, 6)
        return x.reshape(b, c * 8, t // 2, h // 2, w // 2)
    x = x.view(b, c, t, h // 2, 2, w // 2, 2).permute(0, 1, 4, 6, 2, 3, 5)
    return x.reshape(b, c * 4, t, h // 2, w // 2)


def _channels_to_space(x: Tensor, time: bool) -> Tensor:
    """The inverse of _space_to_channels."""
    b, c, t, h, w = x.shape
    if time:
        x = x.view(b, c // 8, 2, 2, 2, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        return x.reshape(b, c // 8, t * 2, h * 2, w * 2)
    x = x.view(b, c // 4, 2, 2, t, h, w).permute(0, 1, 4, 5, 2, 6, 3)
    return x.reshape(b, c // 4, t, h * 2, w * 2)


class SpaceToChannelAverage(nn.Module):
    """Parameter-free shortcut of a downsampling: space (and time) to channels, then the mean of
    consecutive channel groups down to `cout`. A single frame is never halved in time."""

    def __init__(self, cin: int, cout: int, factor: int = 2, time: bool = False):
        super().__init__()
        self.cout, self.factor, self.time = cout, factor, time

    def forward(self, x: Tensor) -> Tensor:
        if self.factor == 2:
            x = _space_to_channels(x, self.time and x.shape[2] != 1)
        b, c, t, h, w = x.shape
        return x.view(b, self.cout, c // self.cout, t, h, w).mean(dim=2)


class ChannelDuplicateToSpace(nn.Module):
    """Parameter-free shortcut of an upsampling: repeat each channel, then channels to space (and time)."""

    def __init__(self, cin: int, cout: int, factor: int = 2, time: bool = False):
        super().__init__()
        self.cin, self.cout, self.factor, self.time = cin, cout, factor, time

    def forward(self, x: Tensor, image: bool | None = None) -> Tensor:
        time = _time(self.time, x, image)
        r = self.factor ** (3 if time else 2) if self.factor == 2 else 1
        x = x.repeat_interleave(self.cout * r // self.cin, dim=1)
        return _channels_to_space(x, time) if self.factor == 2 else x


class InterpolateConv(nn.Module):
    """Nearest-neighbour upsampling by 2 in space (and in time, unless the clip is an image), then a
    3x3x3 conv."""

    def __init__(self, cin: int, cout: int, time: bool):
        super().__init__()
        self.time = time
        self.conv = Conv(cin, cout, 3, bias=True)

    def forward(self, x: Tensor, image: bool | None = None) -> Tensor:
        ft = 2 if _time(self.time, x, image) else 1
        return self.conv(F.interpolate(x, scale_factor=(ft, 2, 2), mode="nearest"))


class Encoder(nn.Module):
    def __init__(self, widths, depths, blocks, temporal, latent_channels: int, head_dim: int):
        super().__init__()
        self.project_in = Conv(3, widths[0], 3, bias=True)
        stages = []
        for i, (width, depth) in enumerate(zip(widths, depths)):
            ops = [block(blocks[i], width, head_dim) for _ in range(depth)]
            if i < len(widths) - 1:
                stride = (2 if temporal[i] else 1, 2, 2)
                down = Conv(width, widths[i + 1], 3, stride=stride, bias=True)
                ops.append(Residual(down, SpaceToChannelAverage(width, widths[i + 1], 2, temporal[i])))
            stages.append(Sequence(ops))
        self.stages = nn.ModuleList(stages)
        out = Sequence([Conv(widths[-1], latent_channels, 3, bias=True)])
        self.project_out = Residual(out, SpaceToChannelAverage(widths[-1], latent_channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        x = self.project_in(x)
        for stage in self.stages:
            x = stage(x)
        return self.project_out(x)


class Decoder(nn.Module):
    def __init__(self, widths, depths, blocks, temporal, latent_channels: int, head_dim: int):
        super().__init__()
        self.project_in = Residual(
            Conv(latent_channels, widths[-1], 3, bias=True), ChannelDuplicateToSpace(latent_channels, widths[-1], 1)
        )
        stages = []
        for i, (width, depth) in enumerate(zip(widths, depths)):
            ops: list[nn.Module] = []
            if i < len(widths) - 1:
                up = InterpolateConv(widths[i + 1], width, temporal[i])
                ops.append(Resample(up, ChannelDuplicateToSpace(widths[i + 1], width, 2, temporal[i])))
            ops += [block(blocks[i], width, head_dim) for _ in range(depth)]
            stages.append(Sequence(ops))
        self.stages = nn.ModuleList(stages)  # stages[i] works at widths[i]; run from the last to the first
        self.project_out = Sequence([ChannelRMSNorm(widths[0]), nn.ReLU(), Conv(widths[0], 3, 3, bias=True)])

    def forward(self, z: Tensor, image: bool | None = None) -> Tensor:
        """Latents -> video. `image`: whether z is one image (no temporal upsampling) rather than a
        video; None: a single latent frame is an image (a 4-frame clip's one latent frame is not)."""
        image = z.shape[2] == 1 if image is None else image
        x = self.project_in(z)
        for stage in reversed(self.stages):
            for op in stage.op_list:
                x = op(x, image) if isinstance(op, Resample) else op(x)
        return self.project_out(x)


def init_weights(model: nn.Module, std: float = 0.02) -> None:
    """Open-Sora's from-scratch initialisation: truncated normal weights (norm scales included), zero biases."""
    for m in model.modules():
        w, b = getattr(m, "weight", None), getattr(m, "bias", None)
        if isinstance(w, nn.Parameter):
            nn.init.trunc_normal_(w, std=std)
        if isinstance(b, nn.Parameter):
            nn.init.zeros_(b)
