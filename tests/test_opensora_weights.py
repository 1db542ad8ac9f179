"""Open-Sora 2.0 checkpoints: a model in their layout (split q/k/v, single-block q_proj/k_proj/v_mlp,
rotate-half RoPE rows) computes what ours computes after conversion; conversions round-trip exactly;
the one reader detects the layout; a truncated or foreign file is one error line."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import cli, tiny_mmdit
from safetensors.torch import load_file, save_file

from opensora_lite.errors import CheckpointError
from opensora_lite.models.flux import SPEC as FLUX
from opensora_lite.models.flux.model import MMDiT
from opensora_lite.models.flux.opensora_convert import bfl_to_opensora, is_opensora_state, opensora_to_bfl
from opensora_lite.models.flux.weights import read_flux_weights
from opensora_lite.models.loading import load_into

SPECS = {  # Open-Sora's two released shapes, tiny: patch 2 over 16-channel latents; patch 1 over 128
    "hunyuan": dict(latent_channels=4, patch_size=[1, 2, 2]),
    "high_compression": dict(latent_channels=128, patch_size=[1, 1, 1]),
}


def _ours(spec: str, seed: int = 0) -> MMDiT:
    cfg = tiny_mmdit(num_heads=2, hidden_size=48, axes_dim=[4, 10, 10], attention_backend="math", **SPECS[spec])
    torch.manual_seed(seed)
    model = MMDiT(cfg, image_condition=True)
    with torch.no_grad():  # non-zero everywhere, as after training
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model.eval()


# ---- a separate forward in Open-Sora's layout: their names, their packing, rotate-half RoPE ----------
def _lin(w, name, x):
    return F.linear(x, w[f"{name}.weight"], w.get(f"{name}.bias"))


def _rms(x, scale):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * scale


def _rope_rotate_half(x, cos, sin):
    """Liger's convention: channel j pairs with j + D/2; cos/sin [L, D/2]."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)


def _tables(ids, axes, theta=10000.0):
    angles = []
    for i, d in enumerate(axes):
        omega = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
        angles.append(ids[:, i].double()[:, None] * omega)
    a = torch.cat(angles, dim=-1)
    return a.cos().float(), a.sin().float()


def _heads(x, n):
    return x.unflatten(-1, (n, -1)).transpose(1, 2)  # B L (H D) -> B H L D


def _attend(q, k, v, cos, sin):
    q, k = _rope_rotate_half(q, cos, sin), _rope_rotate_half(k, cos, sin)
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v
    return att.transpose(1, 2).flatten(2)


def _mod(w, name, vec, n):
    return [c[:, None] for c in _lin(w, name, F.silu(vec)).chunk(n, dim=-1)]


def _ln(x):
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def _temb(t, dim=256):
    freqs = torch.exp(-math.log(10000.0) * torch.arange(dim // 2) / (dim // 2))
    args = 1000.0 * t[:, None] * freqs[None]
    return torch.cat((args.cos(), args.sin()), dim=-1)


def opensora_forward(w, x, t, txt, y, cond, heads, axes, patch):
    """Open-Sora 2.0's MMDiT forward over their state dict w, for latents x [B, C, T, H, W]."""
    b, c, nt, h, wd = x.shape
    p = patch

    def pack(z):  # b c t (h ph) (w pw) -> b (t h w) (c ph pw)
        z = z.reshape(b, z.shape[1], nt, h // p, p, wd // p, p)
        return z.permute(0, 2, 3, 5, 1, 4, 6).reshape(b, nt * (h // p) * (wd // p), -1)

    grid = torch.stack(torch.meshgrid(torch.arange(nt), torch.arange(h // p), torch.arange(wd // p), indexing="ij"))
    ids = torch.cat((torch.zeros(txt.shape[1], 3), grid.reshape(3, -1).T.float()))
    cos, sin = _tables(ids, axes)
    img = _lin(w, "img_in", pack(x)) + _lin(w, "cond_in", pack(cond))
    vec = _lin(w, "time_in.out_layer", F.silu(_lin(w, "time_in.in_layer", _temb(t))))
    vec = vec + _lin(w, "vector_in.out_layer", F.silu(_lin(w, "vector_in.in_layer", y)))
    txt = _lin(w, "txt_in", txt)
    gelu = lambda z: F.gelu(z, approximate="tanh")  # noqa: E731
    nd = len({k.split(".")[1] for k in w if k.startswith("double_blocks.")})
    ns = len({k.split(".")[1] for k in w if k.startswith("single_blocks.")})
    for i in range(nd):
        pre = f"double_blocks.{i}."
        qkv, mods = [], {}
        for s, z in (("txt", txt), ("img", img)):
            mods[s] = _mod(w, pre + f"{s}_mod.lin", vec, 6)
            sh, sc = mods[s][0], mods[s][1]
            zm = (1 + sc) * _ln(z) + sh
            a = pre + f"{s}_attn."
            q = _rms(_heads(_lin(w, a + "q_proj", zm), heads), w[a + "norm.query_norm.scale"])
            k = _rms(_heads(_lin(w, a + "k_proj", zm), heads), w[a + "norm.key_norm.scale"])
            qkv.append((q, k, _heads(_lin(w, a + "v_proj", zm), heads)))
        q, k, v = (torch.cat((qkv[0][j], qkv[1][j]), dim=2) for j in range(3))
        out = _attend(q, k, v, cos, sin)
        outs = {"txt": out[:, : txt.shape[1]], "img": out[:, txt.shape[1] :]}
        new = {}
        for s, z in (("txt", txt), ("img", img)):
            sh1, sc1, g1, sh2, sc2, g2 = mods[s]
            z = z + g1 * _lin(w, pre + f"{s}_attn.proj", outs[s])
            hid = gelu(_lin(w, pre + f"{s}_mlp.0", (1 + sc2) * _ln(z) + sh2))
            new[s] = z + g2 * _lin(w, pre + f"{s}_mlp.2", hid)
        txt, img = new["txt"], new["img"]
    z = torch.cat((txt, img), dim=1)
    hidden = z.shape[-1]
    for i in range(ns):
        pre = f"single_blocks.{i}."
        sh, sc, g = _mod(w, pre + "modulation.lin", vec, 3)
        zm = (1 + sc) * _ln(z) + sh
        q = _rms(_heads(_lin(w, pre + "q_proj", zm), heads), w[pre + "norm.query_norm.scale"])
        k = _rms(_heads(_lin(w, pre + "k_proj", zm), heads), w[pre + "norm.key_norm.scale"])
        v, mlp = _lin(w, pre + "v_mlp", zm).split([hidden, w[pre + "v_mlp.weight"].shape[0] - hidden], dim=-1)
        out = _attend(q, k, _heads(v, heads), cos, sin)
        z = z + g * _lin(w, pre + "linear2", torch.cat((out, gelu(mlp)), dim=-1))
    z = z[:, txt.shape[1] :]
    sh, sc = _lin(w, "final_layer.adaLN_modulation.1", F.silu(vec)).chunk(2, dim=-1)
    tokens = _lin(w, "final_layer.linear", (1 + sc[:, None]) * _ln(z) + sh[:, None])
    out = tokens.reshape(b, nt, h // p, wd // p, c, p, p).permute(0, 4, 1, 2, 5, 3, 6)
    return out.reshape(b, c, nt, h, wd)


def _inputs(model: MMDiT, seed: int = 1):
    cfg, g = model.cfg, torch.Generator().manual_seed(seed)
    x = torch.randn(2, cfg.latent_channels, 3, 4, 6, generator=g)
    mask = torch.zeros(2, 1, 3, 4, 6)
    mask[:, :, 0] = 1  # i2v_head: the first latent frame given
    cond = torch.cat((mask, x * mask), dim=1)
    txt = torch.randn(2, 5, cfg.context_in_dim, generator=g)
    return x, torch.rand(2, generator=g), txt, torch.randn(2, cfg.vec_in_dim, generator=g), cond


# ---- tests ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", list(SPECS))
def test_a_model_in_opensora_layout_computes_what_ours_does(spec):
    ours = _ours(spec)
    theirs = bfl_to_opensora(ours.state_dict())
    x, t, txt, y, cond = _inputs(ours)
    with torch.no_grad():
        got = ours(x, t, txt, y, cond=cond)
        ref = opensora_forward(theirs, x, t, txt, y, cond, 2, ours.cfg.axes_dim, ours.cfg.patch_size[1])
        # the same weights read as if rotate-half were interleaved: the reference must notice
        wrong = opensora_forward(_renamed_only(ours), x, t, txt, y, cond, 2, ours.cfg.axes_dim, ours.cfg.patch_size[1])
    rel = ((got - ref).norm() / ref.norm()).item()
    assert rel <= 1e-5, rel
    miss = ((got - wrong).norm() / ref.norm()).item()
    assert miss > 1e-4 and miss > 30 * rel, (miss, rel)  # the row order matters, and is what we undo
    assert theirs["cond_in.weight"].shape[1] == (ours.cfg.latent_channels + 1) * ours.cfg.patch_size[1] ** 2


def _renamed_only(model: MMDiT) -> dict[str, torch.Tensor]:
    """Their names without the RoPE row permutation (what a rename-only conversion would give)."""
    bfl, hidden = model.state_dict(), model.cfg.hidden_size
    out = bfl_to_opensora(bfl)
    for key, t in bfl.items():
        if m := re.match(r"(double_blocks\.\d+\.(?:img|txt)_attn\.|single_blocks\.\d+\.)(?:qkv|linear1)\.(\w+)$", key):
            out[f"{m[1]}q_proj.{m[2]}"], out[f"{m[1]}k_proj.{m[2]}"] = t[:hidden], t[hidden : 2 * hidden]
        elif key.endswith("_norm.scale"):
            out[key] = t
    return out


def _expected_names(depth: int, single: int) -> set[str]:
    """The parameter names of Open-Sora 2.0's MMDiTModel (fused_qkv=False, cond_embed=True, no guidance)."""
    names = {"img_in", "txt_in", "cond_in", "time_in.in_layer", "time_in.out_layer", "vector_in.in_layer"}
    names |= {"vector_in.out_layer", "final_layer.linear", "final_layer.adaLN_modulation.1"}
    for i in range(depth):
        for s in ("img", "txt"):
            names |= {f"double_blocks.{i}.{s}_{m}" for m in ("mod.lin", "attn.proj", "mlp.0", "mlp.2")}
            names |= {f"double_blocks.{i}.{s}_attn.{m}" for m in ("q_proj", "k_proj", "v_proj")}
    for i in range(single):
        names |= {f"single_blocks.{i}.{m}" for m in ("q_proj", "k_proj", "v_mlp", "linear2", "modulation.lin")}
    params = {f"{n}.{p}" for n in names for p in ("weight", "bias")}
    for i in range(depth):
        for s in ("img", "txt"):
            params |= {f"double_blocks.{i}.{s}_attn.norm.{n}.scale" for n in ("query_norm", "key_norm")}
    return params | {f"single_blocks.{i}.norm.{n}.scale" for i in range(single) for n in ("query_norm", "key_norm")}


def test_round_trips_are_exact_both_ways():
    ours = _ours("hunyuan")
    bfl = ours.state_dict()
    theirs = bfl_to_opensora(bfl)
    assert set(theirs) == _expected_names(ours.cfg.depth, ours.cfg.depth_single_blocks)
    assert is_opensora_state(theirs) and not is_opensora_state(bfl)
    back = opensora_to_bfl(theirs)
    assert back.keys() == bfl.keys() and all(torch.equal(back[k], bfl[k]) for k in bfl)
    g = torch.Generator().manual_seed(5)  # a state in their layout with weights of its own
    fresh = {k: torch.randn(v.shape, generator=g) for k, v in theirs.items()}
    again = bfl_to_opensora(opensora_to_bfl(fresh))
    assert again.keys() == fresh.keys() and all(torch.equal(again[k], fresh[k]) for k in fresh)


def test_the_one_reader_detects_the_layout_and_loads_it(tmp_path):
    ours = _ours("high_compression")
    path = tmp_path / "Open_Sora_v2_tiny.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in bfl_to_opensora(ours.state_dict()).items()}, str(path))
    state, fmt = read_flux_weights(path)
    assert fmt == "opensora"
    fresh = MMDiT(ours.cfg, image_condition="cond_in.weight" in state)
    report = load_into(fresh, state, str(path), FLUX.optional_keys())
    assert report.missing == [] and report.unexpected == []
    bf16 = {k: v.to(torch.bfloat16).float() for k, v in ours.state_dict().items()}
    assert all(torch.equal(fresh.state_dict()[k], bf16[k]) for k in bf16)

    # osl-export reads it through the same reader and writes BFL names (the I2V input left out)
    proc = cli(
        "osl-export", f"checkpoint={path}", f"out={tmp_path / 'o'}", "axes_dim=[4,10,10]", "formats=[bfl,opensora]"
    )
    assert proc.returncode == 0 and "(opensora)" in proc.stdout, proc.stderr
    exported = load_file(tmp_path / "o" / "flux_video.safetensors")
    assert exported.keys() == {k for k in bf16 if not k.startswith("cond_in.")}
    assert all(torch.equal(exported[k].float(), bf16[k]) for k in exported)
    again = load_file(tmp_path / "o" / "flux_video_opensora.safetensors")  # their layout, cond_in kept
    saved = load_file(path)
    assert again.keys() == saved.keys() and all(torch.equal(again[k], saved[k]) for k in saved)


def test_truncated_or_foreign_files_are_one_clear_error(tmp_path):
    theirs = bfl_to_opensora(_ours("hunyuan").state_dict())
    whole = tmp_path / "whole.safetensors"
    save_file(theirs, str(whole))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    partial = tmp_path / "partial.safetensors"
    save_file({k: v for k, v in theirs.items() if "single_blocks.1.k_proj" not in k}, str(partial))
    foreign = tmp_path / "vae.safetensors"
    save_file(
        {"encoder.conv_in.weight": torch.zeros(4, 3, 3, 3), "decoder.conv_out.bias": torch.zeros(3)}, str(foreign)
    )
    cases = [
        (cut, "cannot read Flux weights"),
        (partial, "single_blocks.1.linear1.weight needs"),
        (foreign, "not an MMDiT checkpoint"),
    ]
    for path, message in cases:
        with pytest.raises(CheckpointError, match=message) as err:
            read_flux_weights(path)
        assert len(str(err.value).splitlines()) == 1
    proc = cli("osl-export", f"checkpoint={foreign}", f"out={tmp_path / 'o'}", "axes_dim=[4,10,10]")
    assert proc.returncode == 2 and "not an MMDiT checkpoint" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
