"""Tokens and analytic train FLOPs per sample of the opensora2 recipe's MMDiT for every autoencoder.

Each autoencoder with the diffusion patch it comes with (configs/autoencoder/<name>.yaml: patch_size),
at 256px and 768px (square), 129 frames (128 where the autoencoder needs a multiple of 4: DC-AE), the
T5 sequence of the recipe (512 tokens). FLOPs from models/flops.py (forward + backward, no recomputation).

    python3 -m benchmarks.bench_ae_tokens [--append]     # --append: add the table to docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import dataclasses

from benchmarks.benchlib import heading, publish, table  # noqa: E402
from opensora_lite.autoencoders.base import frames_fit, latent_frame_count  # noqa: E402
from opensora_lite.config.stages import load_autoencoder  # noqa: E402
from opensora_lite.models.flux.flops import mmdit_flops  # noqa: E402

AUTOENCODERS = [
    ("hunyuan", "HunyuanVideo"),
    ("wan", "Wan 2.1"),
    ("wan22", "Wan 2.2"),
    ("ltx", "LTX-Video"),
    ("hunyuan15", "HunyuanVideo-1.5"),
    ("dc_ae", "Video DC-AE"),
]
SIZES = [256, 768]


def recipe():
    from hydra import compose, initialize_config_dir

    from opensora_lite.config.load import config_dir, register, to_config

    register()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return to_config(compose("config", overrides=["experiment=opensora2"]))


def rows() -> list[list[str]]:
    cfg = recipe()
    txt = cfg.text_encoder.t5.max_length
    out, base = [], {}
    for name, label in AUTOENCODERS:
        ae = load_autoencoder(name, f"autoencoder={name}")
        patch = list(ae.patch_size or cfg.model.patch_size)
        model = dataclasses.replace(cfg.model, latent_channels=ae.latent_channels, patch_size=patch)
        frames = 129 if frames_fit(129, ae.temporal_factor, ae.causal) else 128
        lat_t = latent_frame_count(frames, ae.temporal_factor, ae.causal)
        row = [
            label,
            f"{ae.temporal_factor}x{ae.spatial_factor}x{ae.spatial_factor}, {ae.latent_channels} ch",
            "x".join(map(str, patch)),
            str(frames),
        ]
        for px in SIZES:
            side = px // (ae.spatial_factor * patch[1])
            tokens = (lat_t // patch[0]) * side * side
            flops = mmdit_flops(model, tokens, txt).train
            base.setdefault(px, flops)
            row += [f"{tokens:,}", f"{flops / 1e15:.2f}", f"{base[px] / flops:.1f}x"]
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--append", action="store_true", help="append the table to docs/benchmarks.md")
    args = parser.parse_args()
    header = ["autoencoder", "compression", "patch", "frames"]
    for px in SIZES:
        header += [f"{px}px tokens", f"{px}px PFLOP/sample", f"{px}px vs Hunyuan"]
    lines = heading(
        "Tokens and train FLOPs per sample by autoencoder (opensora2 recipe, analytic)",
        "python3 -m benchmarks.bench_ae_tokens --append",
        note="; square frames, 512 T5 tokens, forward + backward (models/flops.py), no recomputation",
    )
    publish(lines + table(header, rows()), args.append)


if __name__ == "__main__":
    main()
