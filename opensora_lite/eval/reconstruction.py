"""Reconstruction quality of an autoencoder: PSNR and SSIM over frames, and a contact sheet.

Clips are [B, 3, T, H, W] in [-1, 1]; both scores are computed on [0, 1] pixels per frame and
averaged. SSIM is Wang et al.'s, with an 11-tap Gaussian window (sigma 1.5) over each channel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from opensora_lite.eval.contact_sheet import save_contact_sheet


def _frames(video: Tensor) -> Tensor:
    """[B, 3, T, H, W] in [-1, 1] -> [B*T, 3, H, W] in [0, 1]."""
    return ((video.float().clamp(-1, 1) + 1) / 2).transpose(1, 2).flatten(0, 1)


def psnr(recon: Tensor, video: Tensor) -> float:
    """Mean PSNR (dB) over frames; identical frames count as 100 dB."""
    mse = (_frames(recon) - _frames(video)).pow(2).flatten(1).mean(1)
    return float((10 * torch.log10(1 / mse.clamp_min(1e-10))).clamp(max=100).mean())


def ssim(recon: Tensor, video: Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM over frames (a window larger than the frame is cut to the frame's smaller side, odd)."""
    a, b = _frames(recon), _frames(video)
    window = min(window, *a.shape[-2:])
    window -= 1 - window % 2
    x = torch.arange(window, dtype=torch.float32) - window // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(3, 1, window, window).to(a.device)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, kernel, groups=3)

    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def to_uint8(video: Tensor) -> list[np.ndarray]:
    """[B, 3, T, H, W] in [-1, 1] -> B clips of uint8 [T, H, W, 3]."""
    v = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [c.permute(1, 2, 3, 0).cpu().numpy() for c in v]


def reconstruction_sheet(path: str | Path, video: Tensor, recon: Tensor, rows: int = 4) -> Path:
    """A contact sheet of up to `rows` clips, each input row above its reconstruction row."""
    clips, labels = [], []
    for i, (inp, out) in enumerate(zip(to_uint8(video[:rows]), to_uint8(recon[:rows]))):
        clips += [inp, out]
        labels += [f"clip {i}: input", f"clip {i}: reconstruction"]
    return save_contact_sheet(path, clips, labels)
