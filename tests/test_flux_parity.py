"""Our MMDiT is Flux: diffusers' FluxTransformer2DModel with random weights, converted to BFL names and
loaded into our model, gives the same output for the same tokens, positions, text and timestep."""

import pytest
import torch
from conftest import both_flux_outputs
from safetensors.torch import save_file

from benchmarks.flux_reference import matching_mmdit, random_diffusers_flux
from opensora_lite.errors import CheckpointError
from opensora_lite.models.flux import SPEC as FLUX
from opensora_lite.models.flux.convert import bfl_to_diffusers, diffusers_to_bfl, is_diffusers_state
from opensora_lite.models.flux.model import MMDiT
from opensora_lite.models.flux.rope import video_position_ids
from opensora_lite.models.flux.weights import read_flux_weights
from opensora_lite.models.loading import load_into

CONFIGS = [  # (double blocks, single blocks, heads, head dim, RoPE axes, guidance)
    (1, 1, 2, 16, (4, 6, 6), False),
    (2, 3, 3, 24, (8, 8, 8), True),
    (0, 2, 4, 8, (2, 2, 4), False),
]


def _diffusers_model(depth, single, heads, head_dim, axes, guidance, seed=0):
    return random_diffusers_flux(depth, single, heads, head_dim, axes, guidance, 12, 10, 16, std=0.2, seed=seed).eval()


def _ours(depth, single, heads, head_dim, axes, guidance) -> MMDiT:
    """Our model with the architecture of the spec (not its weights)."""
    return matching_mmdit(_diffusers_model(depth, single, heads, head_dim, axes, guidance), "math", load=False).eval()


@pytest.mark.parametrize("spec", CONFIGS, ids=lambda s: f"d{s[0]}s{s[1]}h{s[2]}g{int(s[5])}")
def test_same_output_as_diffusers(spec):
    ref = _diffusers_model(*spec)
    ours = _ours(*spec)
    state = ref.state_dict()
    assert is_diffusers_state(state)
    report = load_into(ours, diffusers_to_bfl(state), "diffusers", FLUX.optional_keys())
    assert report.missing == [] and report.unexpected == []

    g = torch.Generator().manual_seed(1)
    b, txt_len = 2, 7
    img_ids = video_position_ids(3, 4, 5)  # video positions: time on Flux's unused axis 0
    img = torch.randn(b, img_ids.shape[0], 16, generator=g)
    txt = torch.randn(b, txt_len, 12, generator=g)
    txt_ids = torch.zeros(txt_len, 3)
    y = torch.randn(b, 10, generator=g)
    t = torch.rand(b, generator=g)
    guidance = torch.full((b,), 3.5) if spec[5] else None
    got, expected = both_flux_outputs(ours, ref, img, img_ids, txt, txt_ids, t, y, guidance)
    rel = ((got - expected).norm() / expected.norm()).item()
    assert rel <= 1e-5, rel


@pytest.mark.parametrize("spec", CONFIGS[:2], ids=["plain", "guidance"])
def test_conversion_round_trips_exactly(spec):
    state = _diffusers_model(*spec).state_dict()
    back = bfl_to_diffusers(diffusers_to_bfl(state))
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)
    ours = _ours(*spec)
    bfl = ours.state_dict()
    again = diffusers_to_bfl(bfl_to_diffusers(bfl))
    assert again.keys() == bfl.keys() and all(torch.equal(again[k], bfl[k]) for k in bfl)


def test_diffusers_folders_load_sharded_or_inside_a_pipeline(tmp_path):
    spec = CONFIGS[1]
    ref = _diffusers_model(*spec)
    ref.save_pretrained(tmp_path / "pipe" / "transformer", max_shard_size="20KB")  # several shards + index
    assert len(list((tmp_path / "pipe" / "transformer").glob("*.safetensors"))) > 1
    for where in (tmp_path / "pipe" / "transformer", tmp_path / "pipe"):
        state, fmt = read_flux_weights(where)
        assert fmt == "diffusers"
        report = load_into(_ours(*spec), state, str(where), FLUX.optional_keys())
        assert report.missing == [] and report.unexpected == []
    single = tmp_path / "flux1-tiny.safetensors"  # our BFL export of the same weights reads as BFL
    save_file({k: v.contiguous() for k, v in diffusers_to_bfl(ref.state_dict()).items()}, str(single))
    assert read_flux_weights(single)[1] == "bfl"

    shard = sorted((tmp_path / "pipe" / "transformer").glob("*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(CheckpointError, match="cannot read Flux weights"):
        read_flux_weights(tmp_path / "pipe")
    with pytest.raises(CheckpointError, match="a folder without"):
        read_flux_weights(tmp_path)
