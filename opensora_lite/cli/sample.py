"""`osl-sample`: generate videos from a stage checkpoint, with the run's own config.

osl-sample checkpoint=runs/tiny_cpu/hires prompts='["a fast red circle moving left"]'
osl-sample checkpoint=runs/tiny_cpu/i2v image=ref.png prompts='["a fast red circle moving up"]'
"""

from __future__ import annotations

import io
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from opensora_lite.autoencoders import build_autoencoder
from opensora_lite.cli.common import hydra_entry
from opensora_lite.config.schema import Config, SampleJobConfig
from opensora_lite.errors import CheckpointError
from opensora_lite.models.flux_weights import load_into, read_flux_weights
from opensora_lite.models.mmdit import MMDiT
from opensora_lite.parallel.engine import pick_device
from opensora_lite.text.encoders import TextEncoders
from opensora_lite.train.evaluation import generate, save_samples
from opensora_lite.train.state import resolve_weights_path


@dataclass
class SampleContext:
    """The parts of a Runtime that sampling needs."""

    cfg: Config
    text: TextEncoders
    ae: torch.nn.Module
    device: torch.device

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.cfg.run.dtype == "bf16" else nullcontext()


def run_config_for(weights: Path) -> Config:
    """The resolved config saved in the run directory that holds this checkpoint."""
    for parent in weights.parents:
        if (parent / "config.yaml").is_file():
            merged = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(parent / "config.yaml"))
            return OmegaConf.to_object(merged)
    raise CheckpointError(f"no config.yaml of a run found above {weights}")


def read_first_frame(path: str, size: tuple[int, int]) -> np.ndarray:
    import av

    from opensora_lite.data.video import resize_crop_size

    with av.open(io.BytesIO(Path(path).read_bytes())) as container:
        frame = next(container.decode(video=0))
    nh, nw, top, left = resize_crop_size(frame.height, frame.width, size)
    return frame.to_ndarray(width=nw, height=nh, format="rgb24", interpolation="AREA")[
        top : top + size[0], left : left + size[1]
    ]


@hydra_entry("sample")
def main(cfg: DictConfig) -> None:
    job: SampleJobConfig = OmegaConf.to_object(cfg)
    weights = resolve_weights_path(job.checkpoint, latest=True)
    run_cfg = run_config_for(weights)
    for key in ("num_steps", "cfg_scale", "resolution", "num_frames", "aspect_ratio", "seed"):
        setattr(run_cfg.sample, key, getattr(job, key))
    device = pick_device(job.device, 0)
    state, _ = read_flux_weights(weights)
    model = MMDiT(run_cfg.model, image_condition="cond_in.weight" in state)
    print(load_into(model, state, str(weights)).summary())
    model.to(device).eval()
    ctx = SampleContext(
        run_cfg, TextEncoders(run_cfg.text_encoder, device), build_autoencoder(run_cfg.autoencoder).to(device), device
    )
    stage = next(iter(run_cfg.curriculum.stages.values()))
    stage_name = weights.parent.parent.name if weights.parent.name == "final" else weights.parent.name
    stage = run_cfg.curriculum.stages.get(stage_name, stage)
    from opensora_lite.train.evaluation import sample_shape

    shape = sample_shape(ctx, stage)
    reference = None
    if job.image:
        if not model.image_condition:
            raise CheckpointError(f"{weights} has no image condition (cond_in): sample I2V from an I2V stage")
        reference = np.stack([read_first_frame(job.image, shape[1:])] * len(job.prompts))
    videos = generate(ctx, model, list(job.prompts), shape, job.seed, reference=reference)
    out = Path(job.out) if job.out else weights.parent.parent / "samples_cli"
    paths = save_samples(
        videos, list(job.prompts), out, "i2v" if job.image else "t2v", len(videos), run_cfg.data.target_fps
    )
    for p in paths:
        print(p)


if __name__ == "__main__":
    main()
