"""Reconstruction losses of an autoencoder stage: L1, a VGG perceptual loss, a 3D PatchGAN (hinge).

The perceptual loss reads VGG16-style weights from a local file (torchvision's `features.<i>.weight`
names; LPIPS's per-layer `lin<k>.model.1.weight` when the file has them, else every channel counts
the same). The layer plan comes from the file itself: a gap of 3 between conv indices is ReLU +
max-pool, of 2 a ReLU, so a small VGG-like file works as well as the real one.

The adaptive weight of the adversarial term (Esser et al.'s Taming Transformers) balances the two
gradients where the decoder's last layer hands its output on: the norms are taken with respect to
the reconstruction (the last layer's output), not the layer's weight, because under a sharded engine
that weight is a shard; the squared norms are summed over ranks, so the weight is the one process's.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from opensora_lite.errors import CheckpointError

# LPIPS's input scaling (its ScalingLayer constants), for inputs in [-1, 1]
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def l1_loss(recon: Tensor, video: Tensor) -> Tensor:
    return (recon.float() - video.float()).abs().mean()


class VGGPerceptual(nn.Module):
    """LPIPS-style distance between frames: unit-normalised VGG features at each ReLU before a pool
    (and the last), squared differences, weighted per channel by `lin*` (or averaged), summed over taps."""

    def __init__(self, state: dict[str, Tensor], source: str = "vgg weights"):
        super().__init__()
        convs = sorted(int(k.split(".")[1]) for k in state if k.startswith("features.") and k.endswith(".weight"))
        if not convs:
            raise CheckpointError(f"{source}: no VGG `features.<i>.weight` tensors")
        layers, taps = nn.ModuleList(), []
        for n, idx in enumerate(convs):
            w = state[f"features.{idx}.weight"]
            conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], padding=w.shape[2] // 2)
            conv.weight.data.copy_(w)
            conv.bias.data.copy_(state.get(f"features.{idx}.bias", torch.zeros(w.shape[0])))
            layers.append(conv)
            last = n == len(convs) - 1
            if last or convs[n + 1] - idx == 3:  # ReLU, then a max-pool: a tap
                taps.append(n)
        self.convs, self.taps, self.pool_after = layers, taps, set(taps[:-1])
        lins = [state.get(f"lin{k}.model.1.weight") for k in range(len(taps))]
        self.lins = [None if w is None else w.flatten().float() for w in lins]
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    def _features(self, x: Tensor) -> list[Tensor]:
        x, out = (x - self.shift) / self.scale, []
        for n, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            if n in self.taps:
                out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
            if n in self.pool_after:
                x = F.max_pool2d(x, 2)
        return out

    def forward(self, recon: Tensor, video: Tensor) -> Tensor:
        """Mean distance over frames of [B, 3, T, H, W] clips."""
        frames = lambda v: v.float().transpose(1, 2).flatten(0, 1)  # noqa: E731 (B*T, 3, H, W)
        total = recon.new_zeros((), dtype=torch.float32)
        for k, (a, b) in enumerate(zip(self._features(frames(recon)), self._features(frames(video)))):
            d = (a - b).pow(2)
            lin = self.lins[k]
            d = (d * lin.to(d.device).view(1, -1, 1, 1)).sum(1) if lin is not None else d.mean(1)
            total = total + d.mean()
        return total


def load_perceptual(path: str) -> VGGPerceptual:
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise CheckpointError(f"stage.reconstruction.vgg_path: {path!r} is not a file (weights load from local files)")
    return VGGPerceptual(load_file(path), path)


class PatchDiscriminator3D(nn.Module):
    """A 3D PatchGAN: strided Conv3d layers (space halves each layer, time keeps its length so single
    images pass), GroupNorm (per sample: ranks and the single process see the same statistics),
    LeakyReLU, then one logit per patch."""

    def __init__(self, channels: int = 32, layers: int = 2):
        super().__init__()
        mods: list[nn.Module] = [nn.Conv3d(3, channels, (3, 4, 4), (1, 2, 2), (1, 1, 1)), nn.LeakyReLU(0.2)]
        width = channels
        for _ in range(1, layers):
            nxt = width * 2
            mods += [nn.Conv3d(width, nxt, (3, 4, 4), (1, 2, 2), (1, 1, 1)), nn.GroupNorm(1, nxt), nn.LeakyReLU(0.2)]
            width = nxt
        mods.append(nn.Conv3d(width, 1, 3, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, video: Tensor) -> Tensor:
        return self.net(video.float())


def hinge_d_loss(real: Tensor, fake: Tensor) -> Tensor:
    return 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean())


def hinge_g_loss(fake: Tensor) -> Tensor:
    return -fake.mean()


def adaptive_weight(nll_fn, g_fn, recon: Tensor, scale: float, limit: float = 1e4) -> Tensor:
    """scale * |d nll / d recon| / (|d g / d recon| + 1e-4), clamped to [0, limit], for the losses
    nll_fn(recon) and g_fn(recon). Evaluated on a detached copy of the reconstruction: a graph of its own,
    which no engine hook on the model's output takes part in (under fsdp2 it did, after a checkpoint).
    Over several ranks (equal shares of the batch) the squared norms are summed and divided by world^2:
    the full batch's gradient norms, as one process computes them (both losses are batch means)."""
    r = recon.detach().requires_grad_(True)
    gn = torch.autograd.grad(nll_fn(r), r)[0].float().pow(2).sum()
    gg = torch.autograd.grad(g_fn(r), r)[0].float().pow(2).sum()
    sums = torch.stack([gn, gg]).detach()
    if dist.is_initialized() and (world := dist.get_world_size()) > 1:
        dist.all_reduce(sums)
        sums /= world**2  # each rank's loss is a mean over its 1/world of the batch: its gradients are world x
    return (sums[0].sqrt() / (sums[1].sqrt() + 1e-4)).clamp(0, limit) * scale
