"""Export: a stage checkpoint (full or sharded by several ranks) becomes FLUX.1 weights that diffusers
loads with its own loaders (from_pretrained for the folder, from_single_file for the BFL file) and that
reproduce our model's outputs."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import both_flux_outputs, cli, in_process_group, spawn_ranks, tiny_mmdit
from diffusers import FluxTransformer2DModel
from omegaconf import OmegaConf
from safetensors.torch import load_file

from opensora_lite.checkpoint.stage import StageCheckpoints as StageDir
from opensora_lite.config.schema import Config
from opensora_lite.models.flux import SPEC as FLUX
from opensora_lite.models.flux.export import flux_tensors, read_architecture, write_diffusers_folder
from opensora_lite.models.flux.model import MMDiT
from opensora_lite.models.flux.rope import video_position_ids
from opensora_lite.models.flux.weights import read_flux_weights
from opensora_lite.models.loading import load_into

os.environ["HF_HUB_OFFLINE"] = "1"  # diffusers must find everything locally


def _random_model(cfg, image_condition=False, seed=0) -> MMDiT:
    torch.manual_seed(seed)
    model = MMDiT(cfg, image_condition=image_condition)
    with torch.no_grad():  # non-zero everywhere, as after training (init zeroes gates and outputs)
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model.eval()


def _write_run(root: Path, model: MMDiT, stage: str = "hires") -> Path:
    """A run directory as training leaves it: config.yaml at the top, the stage's final/ weights."""
    cfg = OmegaConf.structured(Config)
    cfg.model = OmegaConf.structured(model.cfg)
    root.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, root / "config.yaml")
    StageDir(root / stage).save_final(model.state_dict(), None, {"name": stage})
    return root / stage


def _compare(ours: MMDiT, ref: FluxTransformer2DModel, txt_len: int = 5) -> float:
    cfg = ours.cfg
    g = torch.Generator().manual_seed(3)
    ids = video_position_ids(3, 2, 3)
    img = torch.randn(2, ids.shape[0], cfg.patch_dim, generator=g)
    txt = torch.randn(2, txt_len, cfg.context_in_dim, generator=g)
    y, t = torch.randn(2, cfg.vec_in_dim, generator=g), torch.rand(2, generator=g)
    guidance = torch.full((2,), 3.5) if cfg.guidance_embed else None
    got, expected = both_flux_outputs(ours, ref, img, ids, txt, torch.zeros(txt_len, 3), t, y, guidance)
    return ((got - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("guidance", [False, True], ids=["plain", "guidance"])
def test_cli_export_of_an_i2v_stage_loads_in_diffusers_and_matches(tmp_path, guidance):
    cfg = tiny_mmdit(guidance_embed=guidance, attention_backend="math")
    model = _random_model(cfg, image_condition=True)
    stage = _write_run(tmp_path / "run", model)
    out = tmp_path / "export"
    proc = cli("osl-export", f"checkpoint={stage}", f"out={out}", "dtype=fp32")
    assert proc.returncode == 0, proc.stderr
    assert "left out 2 tensors" in proc.stdout and "cond_in.weight" in proc.stdout

    ref = FluxTransformer2DModel.from_pretrained(out / "transformer").eval()
    assert ref.config.num_layers == 2 and ref.config.guidance_embeds == guidance
    assert ref.config.axes_dims_rope == (8, 8, 8) or list(ref.config.axes_dims_rope) == [8, 8, 8]
    # Without an image condition the I2V model is the T2V model Flux can represent: same outputs.
    assert _compare(model, ref) <= 1e-5

    bfl = load_file(out / "flux_video.safetensors")
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("cond_in")}
    assert bfl.keys() == expected.keys() and all(torch.equal(bfl[k], expected[k]) for k in bfl)
    assert oct((out / "flux_video.safetensors").stat().st_mode & 0o777) != oct(0o600)  # readable by the group


def test_sharded_diffusers_folder_and_bf16_round_trip(tmp_path):
    model = _random_model(tiny_mmdit(attention_backend="math"))
    tensors, dropped = flux_tensors(model.state_dict(), "bf16")
    assert dropped == [] and all(v.dtype == torch.bfloat16 for v in tensors.values())
    arch = read_architecture(tensors, [8, 8, 8])
    folder = write_diffusers_folder(tensors, tmp_path / "transformer", arch, max_shard_bytes=20_000)
    assert len(list(folder.glob("*.safetensors"))) > 1 and (folder / "config.json").is_file()
    state, fmt = read_flux_weights(folder)
    assert fmt == "diffusers"
    assert all(torch.equal(state[k], tensors[k]) for k in tensors) and state.keys() == tensors.keys()
    ref = FluxTransformer2DModel.from_pretrained(folder, torch_dtype=torch.float32).eval()
    ours = MMDiT(model.cfg).eval()
    load_into(ours, state, str(folder), FLUX.optional_keys())  # bf16 tensors into fp32 parameters
    assert _compare(ours, ref) <= 1e-5


def test_bfl_file_loads_with_diffusers_from_single_file(tmp_path):
    # diffusers' single-file converter hard-codes FLUX.1's 3072 width and MLP ratio 4 (it splits the
    # single blocks' fused linear1 by those numbers): the test model has Flux's width, one block of each.
    cfg = replace(
        tiny_mmdit(attention_backend="math"),
        latent_channels=16,
        hidden_size=3072,
        num_heads=24,
        depth=1,
        depth_single_blocks=1,
        axes_dim=[16, 56, 56],
        context_in_dim=32,
        vec_in_dim=32,
    )
    with torch.device("meta"):
        model = MMDiT(cfg)
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    stage = _write_run(tmp_path / "run", model, stage="t2v")
    out = tmp_path / "export"
    proc = cli("osl-export", f"checkpoint={stage}", f"out={out}")  # bf16, both formats
    assert proc.returncode == 0, proc.stderr
    del model
    ref = FluxTransformer2DModel.from_single_file(
        str(out / "flux_video.safetensors"), config=str(out / "transformer"), torch_dtype=torch.float32
    ).eval()
    ours = MMDiT(cfg).eval()
    report = load_into(ours, read_flux_weights(out / "flux_video.safetensors")[0], "export", FLUX.optional_keys())
    assert report.missing == [] and report.unexpected == []
    assert _compare(ours, ref) <= 1e-5


def _fsdp2_save(rank: int, port: int, folder: str) -> None:
    """One rank of two: shard the model with FSDP2 (each rank holds half of every tensor) and save with DCP."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    def body() -> None:
        model = _random_model(tiny_mmdit(), image_condition=True)
        mesh = init_device_mesh("cpu", (2,))
        for block in [*model.double_blocks, *model.single_blocks]:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        local = model.img_in.weight.to_local()
        assert local.shape[0] == model.cfg.hidden_size // 2  # really sharded
        dcp.save(get_model_state_dict(model), checkpoint_id=folder)

    in_process_group(rank, port, body)


def test_export_consolidates_a_checkpoint_sharded_by_two_ranks(tmp_path):
    reference = _random_model(tiny_mmdit(), image_condition=True)
    run = _write_run(tmp_path / "run", reference, stage="t2v").parent
    step = run / "hires" / "checkpoints" / "step_00000010" / "model_dcp"  # an unfinished stage's newest checkpoint
    spawn_ranks(_fsdp2_save, (str(step),))
    assert len(list(step.glob("*.distcp"))) == 2

    out = tmp_path / "export"
    proc = cli("osl-export", f"checkpoint={run / 'hires'}", f"out={out}", "dtype=fp32", "formats=[bfl]")
    assert proc.returncode == 0, proc.stderr
    assert "(dcp)" in proc.stdout and not (out / "transformer").exists()
    bfl = load_file(out / "flux_video.safetensors")
    expected = {k: v for k, v in reference.state_dict().items() if not k.startswith("cond_in")}
    assert bfl.keys() == expected.keys() and all(torch.equal(bfl[k], expected[k]) for k in bfl)

    first, second = sorted(step.glob("*.distcp"))
    kept = first.read_bytes()
    first.unlink()  # a rank's file lost, or cut short: one clear line each, nothing written
    damages = [(f"{first.name} is missing", lambda: (first.write_bytes(kept), second.write_bytes(b"x" * 100)))]
    damages.append((f"{second.name} is truncated", lambda: None))
    for message, next_damage in damages:
        proc = cli("osl-export", f"checkpoint={step}", f"out={tmp_path / 'again'}")
        assert proc.returncode == 2 and "cannot read the sharded checkpoint" in proc.stderr
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not (tmp_path / "again").exists()
        next_damage()


def test_export_errors_are_one_line(tmp_path):
    model = _random_model(tiny_mmdit(num_heads=3, hidden_size=48, axes_dim=[4, 6, 6]))
    lone = tmp_path / "lone.safetensors"  # weights outside any run: the RoPE split is unknown
    StageDir(tmp_path / "s").save_final(model.state_dict(), None, {})
    (tmp_path / "s" / "final" / "model.safetensors").rename(lone)
    cases = [
        ([f"checkpoint={lone}", f"out={tmp_path / 'o'}"], "give the RoPE split (axes_dim)"),
        ([f"checkpoint={lone}", f"out={tmp_path / 'o'}", "axes_dim=[4,4,4]"], "does not sum to the head size 16"),
        ([f"checkpoint={tmp_path / 'none'}", f"out={tmp_path / 'o'}"], "no weights at"),
        ([f"checkpoint={lone}", f"out={tmp_path / 'o'}", "formats=[onnx]"], "choose one or more of"),
        ([f"out={tmp_path / 'o'}"], "checkpoint: a value is required"),
    ]
    for args, message in cases:
        proc = cli("osl-export", *args)
        assert proc.returncode == 2 and message in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
    proc = cli("osl-export", f"checkpoint={lone}", f"out={tmp_path / 'o'}", "axes_dim=[4,6,6]")
    assert proc.returncode == 0, proc.stderr
    assert read_architecture(load_file(tmp_path / "o" / "flux_video.safetensors"), [4, 6, 6]).num_heads == 3
