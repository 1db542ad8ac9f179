"""What an autoencoder stage reconstructs (stage.reconstruction.modality): the video autoencoder on the
batches' clips, or the audio autoencoder on the log-mel of their sound. Each modality gives the stage's
autoencoder, a step's input from a batch, and the held-out evaluation's scores and sheets; the
autoencoder task (autoencoder.py) runs either through the same loss, discriminator, checkpoint and
loop, so nothing else in a stage knows which it trains.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from opensora_lite.autoencoders import build_autoencoder
from opensora_lite.autoencoders.audio import build_audio_autoencoder, build_vocoder
from opensora_lite.autoencoders.mel import LogMel
from opensora_lite.data.audio import front_end_input
from opensora_lite.data.loader import frames_on_device
from opensora_lite.eval.reconstruction import psnr, reconstruction_sheet, ssim


class VideoReconstruction:
    """modality=video: `autoencoder` on batch["video"] (uint8 [B, 3, T, H, W], made [-1, 1] on the device);
    PSNR/SSIM."""

    name = "video"

    def __init__(self, cfg, device: torch.device):
        self.cfg, self.device = cfg, device

    def build(self) -> nn.Module:
        return build_autoencoder(self.cfg.autoencoder)

    def inputs(self, batch: dict, images: bool) -> Tensor:
        """The step's input; `images`: this step trains on single frames (reconstruction.image_fraction)."""
        video = batch["video"][:, :, :1] if images else batch["video"]
        return frames_on_device(video, self.device)

    def stream_audio(self):
        return None  # the held-out stream needs no sound

    def scores(self, recon: Tensor, x: Tensor) -> dict[str, float]:
        return {"psnr": psnr(recon, x), "ssim": ssim(recon, x)}

    def sheets(self, folder: Path, x: Tensor, recon: Tensor, model: nn.Module) -> dict[str, Path]:
        return {"reconstruction": reconstruction_sheet(Path(folder) / "reconstruction.png", x, recon)}


class AudioReconstruction:
    """modality=audio: `audio_autoencoder` on the log-mel of batch["audio"] (its own front end);
    reconstruction.image_fraction does not apply (sound has no single frames). Scores: the log-mel's mean
    absolute error (mel_l1, in log units) and its PSNR over the front end's range (mel_psnr); sheets:
    spectrograms (inputs above reconstructions) and, to listen, reconstruction.wav: the first clip's
    reconstruction through the configured vocoder."""

    name = "audio"

    def __init__(self, cfg, device: torch.device):
        self.cfg, self.device = cfg, device
        self.front = LogMel(cfg.audio_autoencoder.mel).to(device)

    def build(self) -> nn.Module:
        return build_audio_autoencoder(self.cfg.audio_autoencoder)

    def inputs(self, batch: dict, images: bool) -> Tensor:
        sound, context = front_end_input(batch)  # the windows with their context (data/audio.py)
        return self.front(sound.to(self.device, non_blocking=True), context)

    def stream_audio(self):
        return self.cfg.data.audio

    def _range(self) -> tuple[float, float]:
        """The log-mel values drawn black and white, and the span the PSNR is taken over: silence .. 2."""
        return float(np.log(self.cfg.audio_autoencoder.mel.log_floor)), 2.0

    def scores(self, recon: Tensor, x: Tensor) -> dict[str, float]:
        lo, hi = self._range()
        mse = (recon.float() - x.float()).pow(2).flatten(1).mean(1)
        db = 10 * torch.log10((hi - lo) ** 2 / mse.clamp_min(1e-10))
        return {"mel_l1": float((recon - x).abs().mean()), "mel_psnr": float(db.clamp(max=100).mean())}

    def _picture(self, logmel: Tensor) -> Tensor:
        """Log-mel [B, ch, frames, mels] -> one grey 'frame' [B, 3, 1, mels, frames] in [-1, 1], low mels at
        the bottom (the first channel)."""
        lo, hi = self._range()
        grey = ((logmel[:, :1].float() - lo) / (hi - lo) * 2 - 1).clamp(-1, 1)
        return grey.transpose(2, 3).flip(2).unsqueeze(2).expand(-1, 3, -1, -1, -1)

    def sheets(self, folder: Path, x: Tensor, recon: Tensor, model: nn.Module) -> dict[str, Path]:
        from opensora_lite.data.audio import encode_wav

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        sheet = reconstruction_sheet(folder / "reconstruction.png", self._picture(x), self._picture(recon))
        vocoder = build_vocoder(self.cfg.audio_autoencoder).to(self.device)
        pcm = (vocoder(recon[:1])[0].clamp(-1, 1).cpu().numpy() * 32767).round().astype(np.int16)
        (folder / "reconstruction.wav").write_bytes(encode_wav(pcm, vocoder.sample_rate))
        return {"reconstruction": sheet}


MODALITIES = {m.name: m for m in (VideoReconstruction, AudioReconstruction)}


def reconstruction_for(cfg, modality: str, device: torch.device):
    """The modality object of stage.reconstruction.modality (registry.RECONSTRUCTION_MODALITIES)."""
    return MODALITIES[modality](cfg, device)
