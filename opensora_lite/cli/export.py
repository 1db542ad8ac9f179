"""`osl-export`: a checkpoint of any stage (any engine, sharded or not) as FLUX.1 weights.

osl-export checkpoint=runs/tiny_cpu/hires out=exports/tiny            # BFL file + diffusers folder
osl-export checkpoint=runs/os2/hires_768px out=exports/os2 formats=[bfl] ema=true
osl-export checkpoint=runs/os2/hires_768px out=exports/os2 formats=[opensora]  # Open-Sora 2.0's layout
osl-export checkpoint=runs/tiny_cpu/lora out=exports/lora formats=[lora]       # a LoRA stage's adapters
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from opensora_lite.checkpoint.files import write_safetensors
from opensora_lite.checkpoint.stage import resolve_adapters_path, resolve_weights_path
from opensora_lite.cli.common import hydra_entry
from opensora_lite.config.schema import ExportJobConfig
from opensora_lite.dtypes import DTYPES
from opensora_lite.errors import ConfigError
from opensora_lite.models.flux.export import (
    adapter_hidden_size,
    adapters_to_diffusers,
    flux_tensors,
    read_architecture,
    write_bfl_file,
    write_diffusers_folder,
)
from opensora_lite.models.flux.opensora_convert import bfl_to_opensora
from opensora_lite.models.flux.weights import read_flux_weights
from opensora_lite.models.lora import lora_scale, read_adapters

FORMATS = ("bfl", "diffusers", "opensora", "lora")
LORA_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers' load_lora_weights looks for


def _run_model(weights: Path) -> dict:
    """The `model` config of the run that wrote these weights (its config.yaml); {} if there is none."""
    for parent in weights.parents:
        if (parent / "config.yaml").is_file():
            model = OmegaConf.select(OmegaConf.load(parent / "config.yaml"), "model")
            return OmegaConf.to_container(model) if model is not None else {}
    return {}


def _rope_note(model: dict) -> str | None:
    """What FLUX.1's fixed RoPE (base 10000, integer positions) will do differently from this run's, if anything."""
    theta, grid = model.get("theta", 10000.0), model.get("rope_reference_grid")
    if theta == 10000.0 and grid is None:
        return None
    extra = f", positions interpolated above a {grid[0]}x{grid[1]} token grid" if grid else ""
    return f"note: this run's RoPE (base {theta:g}{extra}) is not part of FLUX.1's format; loaders use base 10000"


def write_whole(state: dict, path: Path, naming: str) -> Path:
    """One safetensors file (Open-Sora 2.0's layout, diffusers LoRA adapters), written whole, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    write_safetensors(state, tmp, {"format": "pt", "naming": naming})
    tmp.replace(path)
    return path


def export_lora(job: ExportJobConfig) -> Path:
    """A LoRA stage's adapters in diffusers/peft LoRA names (`<out>/lora/pytorch_lora_weights.safetensors`),
    for FluxTransformer2DModel.load_lora_adapter or a Flux pipeline's load_lora_weights."""
    path = resolve_adapters_path(job.checkpoint)
    adapters, meta = read_adapters(path)
    scale = lora_scale(int(meta["lora_rank"]), float(meta["lora_alpha"]))
    state, left = adapters_to_diffusers(adapters, scale, adapter_hidden_size(adapters))
    if left:
        print(f"left out {len(left)} trained tensors diffusers' LoRA has no place for: {', '.join(left)}")
    target = Path(job.out) / "lora" / LORA_FILE
    tensors = {k: v.to(DTYPES[job.dtype]) for k, v in state.items()}
    print(f"read {len(adapters)} adapter tensors from {path} (rank {meta['lora_rank']}, alpha {meta['lora_alpha']})")
    write_whole(tensors, target, "diffusers-flux-lora")
    print(f"wrote {target} (diffusers Flux LoRA, {len(tensors)} tensors, {job.dtype})")
    return target


def export(job: ExportJobConfig) -> list[Path]:
    unknown = sorted(set(job.formats) - set(FORMATS))
    if unknown or not job.formats:
        raise ConfigError("formats", f"{list(job.formats)}: choose one or more of {list(FORMATS)}")
    family = _run_model(Path(job.checkpoint).resolve() / "x").get("family", "flux")
    if family != "flux":  # the formats here are Flux's (BFL, diffusers Flux, Open-Sora 2.0, Flux LoRA)
        raise ConfigError("checkpoint", f"osl-export writes Flux formats; this run's model family is {family}")
    if job.formats == ["lora"]:
        return [export_lora(job)]
    weights = resolve_weights_path(job.checkpoint, ema=job.ema, latest=True)
    state, fmt = read_flux_weights(weights)
    print(f"read {len(state)} tensors from {weights} ({fmt})")
    run_model = _run_model(weights)
    arch = read_architecture(state, job.axes_dim if job.axes_dim is not None else run_model.get("axes_dim"))
    note = _rope_note(run_model) if set(job.formats) & {"bfl", "diffusers"} else None
    if note:
        print(note)
    tensors, dropped = flux_tensors(state, job.dtype)
    if dropped and set(job.formats) & {"bfl", "diffusers"}:
        print(f"left out {len(dropped)} tensors FLUX.1 has no place for: {', '.join(dropped)} (the I2V input)")
    out, written = Path(job.out), []
    if "bfl" in job.formats:
        written.append(write_bfl_file(tensors, out / f"{job.name}.safetensors", arch))
    if "diffusers" in job.formats:
        written.append(write_diffusers_folder(tensors, out / "transformer", arch))
    if "opensora" in job.formats:  # Open-Sora 2.0's MMDiT keeps the I2V input
        full = {k: v.detach().to("cpu", DTYPES[job.dtype]) for k, v in state.items()}
        written.append(write_whole(bfl_to_opensora(full), out / f"{job.name}_opensora.safetensors", "opensora-2.0"))
    summary = (
        f"{arch.depth} double + {arch.depth_single_blocks} single blocks, hidden {arch.hidden_size}, "
        f"{arch.num_heads} heads, guidance {arch.guidance_embed}, {job.dtype}"
    )
    for path in written:
        print(f"wrote {path} ({summary})")
    if "lora" in job.formats:
        written.append(export_lora(job))  # prints its own line
    return written


@hydra_entry("export")
def main(cfg: DictConfig) -> None:
    export(OmegaConf.to_object(cfg))


if __name__ == "__main__":
    main()
