"""Open-Sora 2.0's Video DC-AE: its parameter tree, frame rule, tiling, dtypes and loading."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from opensora_lite.autoencoders import build_autoencoder
from opensora_lite.autoencoders.dc_ae import VideoDCAE, _tiled
from opensora_lite.config.schema import AutoencoderConfig, Config
from opensora_lite.errors import CheckpointError
from opensora_lite.layout import config_dir

# (name, shape) of every tensor of Open-Sora's `dc-ae-f32t4c128` state dict, in order, listed by
# building their module tree (opensora/models/dc_ae/, DCAE(dc_ae_f32("dc-ae-f32t4c128"))) on meta.
PARAMS = Path(__file__).parent / "data" / "dc_ae_f32t4c128_params.txt"


def ae_config(name: str, **changes) -> AutoencoderConfig:
    yaml = OmegaConf.merge(
        OmegaConf.structured(AutoencoderConfig), OmegaConf.load(config_dir() / f"autoencoder/{name}")
    )
    cfg = OmegaConf.to_object(yaml)
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


def open_sora_params() -> dict[str, tuple[int, ...]]:
    rows = [line.split() for line in PARAMS.read_text().splitlines()]
    return {name: tuple(int(d) for d in shape.split(",")) for name, shape in rows}


def test_full_size_tree_has_open_soras_names_and_shapes_and_loads_strictly():
    want = open_sora_params()
    assert len(want) == 339
    ae = VideoDCAE(ae_config("dc_ae.yaml", path=None), device="meta")
    got = {k: tuple(v.shape) for k, v in ae.state_dict().items()}
    assert got == want and list(got) == list(want)
    assert sum(v.numel() for v in ae.state_dict().values()) == 459_462_147
    released = {k: torch.empty(s, device="meta", dtype=torch.bfloat16) for k, s in want.items()}
    ae.load_state_dict(released, strict=True, assign=True)
    assert all(p.is_meta for p in ae.parameters())
    with pytest.raises(CheckpointError, match=r"1 missing \['decoder.project_out.op_list.2.conv.bias'\]"):
        ae.load_state_dict({k: v for k, v in released.items() if k != "decoder.project_out.op_list.2.conv.bias"})
    renamed = {k.replace("op_list", "ops"): v for k, v in released.items()}
    with pytest.raises(CheckpointError, match="335 missing .* 335 unexpected"):
        ae.load_state_dict(renamed, assign=True)


def tiny(**changes) -> VideoDCAE:
    return build_autoencoder(ae_config("dc_ae_tiny.yaml", **changes))


def video(t: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, t, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_tiny_shapes_frame_rule_scaling_and_determinism():
    ae = tiny()
    assert (ae.latent_channels, ae.spatial_factor, ae.temporal_factor, ae.causal) == (8, 8, 4, False)
    assert [ae.valid_num_frames(n) for n in (1, 4, 8, 5, 6, 33)] == [True, True, True, False, False, False]
    assert ae.latent_frames(1) == 1 and ae.latent_frames(16) == 4
    x = video(8, 16, 24)
    z = ae.encode(x)
    assert z.shape == (1, 8, 2, 2, 3) and z.dtype == torch.float32
    assert ae.encode(x[:, :, :1]).shape == (1, 8, 1, 2, 3)  # an image is one latent frame
    assert torch.equal(ae.encode(x, sample=False), z) and torch.equal(tiny().encode(x), z)  # seeded build
    assert ae.decode(z).shape == x.shape and ae.decode(ae.encode(x[:, :, :1])).shape == (1, 3, 1, 16, 24)
    scaled = tiny(scaling_factor=2.0, shift_factor=0.5)
    torch.testing.assert_close(scaled.encode(x), (z - 0.5) * 2.0)
    torch.testing.assert_close(scaled.decode((z - 0.5) * 2.0), ae.decode(z))
    with pytest.raises(ValueError, match=r"cannot encode 6 frames \(1 or a multiple of 4 frames\)"):
        ae.encode(video(6, 16, 16))
    assert not any(p.requires_grad for p in ae.parameters()) and not ae.train().training


def test_tiles_are_stitched_at_the_right_offsets():
    """Pointwise functions: tiling changes nothing, whatever the tile arithmetic; a wrong offset would."""
    x = torch.randn(1, 2, 13, 5, 3)
    up = lambda v: v.repeat_interleave(4, dim=2) * 3  # noqa: E731 - a decoder-like 4x in time
    torch.testing.assert_close(_tiled(up, x, 2, 4, 3), up(x))
    down = lambda v: v[:, :, ::4] - 1  # noqa: E731 - an encoder-like 4x in time
    y = torch.randn(1, 2, 36, 3, 3)
    torch.testing.assert_close(_tiled(down, y, 2, 16, 8), down(y))
    calls = []
    _tiled(lambda v: calls.append(v.shape[2]) or v, y, 2, 16, 8)
    assert calls == [16, 16, 16, 12]  # tiles start every 8 until one reaches the end
    calls = []
    torch.testing.assert_close(_tiled(lambda v: calls.append(v.shape[2]) or up(v), x, 2, 4, 4, least=2), up(x))
    assert calls == [4, 4, 5]  # a last tile of 1 (< least) is merged into the one before


def test_a_four_frame_clip_round_trips_to_four_frames():
    """A 4-frame clip and an image are both one latent frame; decode's num_frames tells them apart."""
    ae = tiny()
    clip, image = video(4, 16, 16), video(1, 16, 16)
    z = ae.encode(clip)
    assert z.shape == ae.encode(image).shape == (1, 8, 1, 2, 2)
    assert ae.decode(z, num_frames=4).shape == clip.shape and ae.forward(clip).shape == clip.shape
    assert ae.decode(z).shape == ae.decode(z, num_frames=1).shape == image.shape  # default: an image
    torch.testing.assert_close(ae.forward(clip), ae.decode(z, num_frames=4))
    torch.testing.assert_close(ae.decode(ae.encode(video(8, 16, 16)), num_frames=8), ae.forward(video(8, 16, 16)))
    with pytest.raises(ValueError, match="cannot decode 1 latent frames into 8 frames"):
        ae.decode(z, num_frames=8)


def test_tiled_encode_and_decode_match_untiled():
    """Tiles of 32 px x 8 frames (4 x 2 latents), half overlapping, over a 4 x 8 x 8-latent clip.

    Stated tolerance, relative mean absolute difference from untiled: latents < 0.5 (measured 0.40),
    video < 0.25 (measured 0.15). Tiles this small are mostly seam: random weights, a receptive field
    as wide as the tile, and linear attention that sees only its tile."""
    plain, tiled = tiny(), tiny(tiling=True)
    x = video(16, 64, 64)
    seen = []
    tiled.encoder.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[2:])))
    z_plain, z_tiled = plain.encode(x), tiled.encode(x)
    assert z_tiled.shape == z_plain.shape == (1, 8, 4, 8, 8)
    assert max(seen) == (8, 32, 32) and len(seen) == 3 * 3 * 3
    assert (z_tiled - z_plain).abs().mean() < 0.5 * z_plain.abs().mean()
    x_plain, x_tiled = plain.decode(z_plain), tiled.decode(z_plain)
    assert x_tiled.shape == x.shape
    assert (x_tiled - x_plain).abs().mean() < 0.25 * x_plain.abs().mean()
    assert not torch.equal(x_tiled, x_plain)  # it did tile
    small = video(8, 32, 32)  # within one tile: exactly the untiled result
    assert torch.equal(tiled.encode(small), plain.encode(small))


def test_temporal_tiles_never_leave_a_lone_latent_frame():
    """Tiles of 2 latents (8 frames) with no whole latent of overlap, over 5 latents (20 frames): the plan
    used to end on a 1-latent tile, which decoded as an image (1 frame, not 4). It is merged now."""
    cfg = ae_config("dc_ae_tiny.yaml", tiling=True)
    cfg.dc_ae.tile_overlap = 0.25
    tiled, plain = build_autoencoder(cfg), tiny()
    x = video(20, 16, 16)
    enc, dec = [], []
    tiled.encoder.register_forward_pre_hook(lambda m, args: enc.append(args[0].shape[2]))
    tiled.decoder.register_forward_pre_hook(lambda m, args: dec.append(args[0].shape[2]))
    z = tiled.encode(x)
    assert z.shape == plain.encode(x).shape == (1, 8, 5, 2, 2) and enc == [8, 12]
    out = tiled.decode(z, num_frames=20)
    assert out.shape == x.shape and dec == [2, 3]
    ref = plain.decode(z, num_frames=20)
    assert (out - ref).abs().mean() < 0.25 * ref.abs().mean() and not torch.equal(out, ref)


def test_bf16_weights_give_float32_outputs():
    ae = tiny(dtype="bf16")
    assert {p.dtype for p in ae.parameters()} == {torch.bfloat16}
    z = ae.encode(video(4, 16, 16))
    assert z.dtype == torch.float32 and ae.decode(z).dtype == torch.float32
    torch.testing.assert_close(z, tiny().encode(video(4, 16, 16)), atol=0.1, rtol=0.1)


def test_loads_a_local_file_or_folder_strictly_and_reports_what_cannot_load(tmp_path):
    ref = tiny()
    weights = {k: v.clone() + 0.01 for k, v in ref.state_dict().items()}
    save_file(weights, tmp_path / "F32T4C128_AE.safetensors")
    x = video(4, 16, 16)
    for path in (tmp_path / "F32T4C128_AE.safetensors", tmp_path):
        loaded = tiny(path=str(path))
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in weights.items())
        assert not torch.equal(loaded.encode(x), ref.encode(x))
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    save_file({k: v for k, v in weights.items() if "decoder" not in k}, tmp_path / "enc.safetensors")
    for path, problem in [
        (tmp_path / "missing", "does not exist"),
        (tmp_path / "empty", "holds 0 .safetensors files"),
        (tmp_path / "bad.safetensors", "cannot read"),
        (tmp_path / "enc.safetensors", "do not fit dc_ae .* missing"),
    ]:
        with pytest.raises(CheckpointError, match=f"autoencoder.path: .*{problem}"):
            tiny(path=str(path))


def test_inconsistent_architecture_names_the_key():
    with pytest.raises(ValueError, match="autoencoder.dc_ae.blocks: needs 4 entries"):
        cfg = ae_config("dc_ae_tiny.yaml")
        cfg.dc_ae.blocks = ["res"]
        VideoDCAE(cfg)
    with pytest.raises(ValueError, match="autoencoder.spatial_factor/temporal_factor"):
        tiny(spatial_factor=16)


def test_bucket_frame_counts_the_dc_ae_cannot_take_are_one_error_naming_the_key():
    from conftest import typed

    from opensora_lite.config.validate import check_frame_count
    from opensora_lite.errors import ConfigError

    # Open-Sora 2.0's Hunyuan curriculum buckets 4k + 1 frames: with the DC-AE the first one is refused
    with pytest.raises(
        ConfigError, match=r"buckets\.\w+\.(\d+): \1 frames do not suit autoencoder dc_ae \(1 or a mult"
    ):
        typed(["experiment=opensora2", "autoencoder=dc_ae", "model.patch_size=[1,1,1]"])
    cfg = Config(autoencoder=ae_config("dc_ae_tiny.yaml"))
    for n in (1, 4, 32, 128):
        check_frame_count(cfg, n, "some.key")
    with pytest.raises(ConfigError, match=r"^some.key: 33 frames do not suit"):
        check_frame_count(cfg, 33, "some.key")


def test_latent_cache_key_holds_the_dc_ae_architecture_only_for_the_dc_ae():
    from conftest import typed

    from opensora_lite.data.cache import cache_folder

    cfg = typed()
    stage = next(iter(cfg.curriculum.stages))
    pixel = cache_folder(cfg, stage, False)[0]
    cfg.autoencoder.dc_ae.head_dim = 16
    assert cache_folder(cfg, stage, False)[0] == pixel  # pixel caches are not invalidated by dc_ae settings
    cfg.autoencoder = ae_config("dc_ae_tiny.yaml")
    tiny_folder = cache_folder(cfg, stage, False)[0]
    cfg.autoencoder.dc_ae.widths = [8, 16, 16, 64]
    assert tiny_folder != pixel and cache_folder(cfg, stage, False)[0] != tiny_folder
