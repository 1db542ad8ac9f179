"""The MMDiT: Flux parameter names, shapes, RoPE, attention kernels, and the I2V hand-off property."""

import math

import pytest
import torch
from conftest import tiny_mmdit

from opensora_lite.checkpoint.files import clean_key
from opensora_lite.models.attention import attention, available_backends, resolve_backend
from opensora_lite.models.flux import SPEC as FLUX
from opensora_lite.models.flux.model import MMDiT, patchify, unpatchify
from opensora_lite.models.flux.rope import apply_rope, rope_cos_sin, video_position_ids
from opensora_lite.parallel.checkpointing import apply_activation_checkpointing

TINY = tiny_mmdit()


def inputs(b=2, t=3, h=4, w=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, 4, t, h, w, generator=g),
        torch.rand(b, generator=g),
        torch.randn(b, 5, 16, generator=g),
        torch.randn(b, 8, generator=g),
    )


def test_parameter_names_follow_the_bfl_flux_checkpoint():
    keys = set(MMDiT(tiny_mmdit(guidance_embed=True)).state_dict())
    expected = {
        "img_in.weight",
        "img_in.bias",
        "txt_in.weight",
        "time_in.in_layer.weight",
        "time_in.out_layer.bias",
        "vector_in.in_layer.weight",
        "guidance_in.out_layer.weight",
        "double_blocks.0.img_mod.lin.weight",
        "double_blocks.0.txt_mod.lin.bias",
        "double_blocks.0.img_attn.qkv.weight",
        "double_blocks.0.img_attn.qkv.bias",
        "double_blocks.0.img_attn.proj.weight",
        "double_blocks.0.img_attn.norm.query_norm.scale",
        "double_blocks.0.img_attn.norm.key_norm.scale",
        "double_blocks.1.txt_attn.qkv.weight",
        "double_blocks.1.txt_attn.norm.key_norm.scale",
        "double_blocks.0.img_mlp.0.weight",
        "double_blocks.0.img_mlp.2.bias",
        "double_blocks.1.txt_mlp.2.weight",
        "single_blocks.0.linear1.weight",
        "single_blocks.0.linear2.bias",
        "single_blocks.1.modulation.lin.weight",
        "single_blocks.0.norm.query_norm.scale",
        "single_blocks.1.norm.key_norm.scale",
        "final_layer.linear.weight",
        "final_layer.adaLN_modulation.1.weight",
    }
    assert expected <= keys
    assert not any(k.startswith("cond_in") for k in keys)
    # and nothing outside Flux's vocabulary of top-level modules
    assert {k.split(".")[0] for k in keys} == {
        "img_in",
        "txt_in",
        "time_in",
        "vector_in",
        "guidance_in",
        "double_blocks",
        "single_blocks",
        "final_layer",
    }


def test_forward_shape_and_gradients_reach_every_parameter():
    model = MMDiT(TINY, image_condition=True)
    torch.nn.init.normal_(model.final_layer.linear.weight, std=0.02)  # un-zero the output so grads flow
    for m in model.modules():  # and the gates, which start at zero
        if hasattr(m, "lin"):
            torch.nn.init.normal_(m.lin.weight, std=0.02)
    torch.nn.init.normal_(model.cond_in.weight, std=0.02)
    x, t, txt, y = inputs()
    cond = torch.randn(2, 5, 3, 4, 6)
    out = model(x, t, txt, y, cond=cond)
    assert out.shape == x.shape
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_i2v_model_first_step_equals_its_t2v_parent():
    """cond_in is zero-initialised: an I2V model loaded from T2V weights computes the same output."""
    torch.manual_seed(0)
    t2v = MMDiT(TINY)
    for p in t2v.parameters():  # random non-zero weights everywhere (as after training)
        torch.nn.init.normal_(p, std=0.05)
    i2v = MMDiT(TINY, image_condition=True)
    missing, unexpected = i2v.load_state_dict(t2v.state_dict(), strict=False)
    assert missing == ["cond_in.weight", "cond_in.bias"] and unexpected == []
    x, t, txt, y = inputs()
    cond = torch.randn(2, 5, 3, 4, 6)
    assert torch.equal(i2v(x, t, txt, y, cond=cond), t2v(x, t, txt, y))


def test_patchify_roundtrip_and_flux_channel_order():
    x = torch.randn(2, 4, 3, 4, 6)
    tokens = patchify(x, [1, 2, 2])
    assert tokens.shape == (2, 3 * 2 * 3, 16)
    assert torch.equal(unpatchify(tokens, [1, 2, 2], (3, 2, 3)), x)
    # Flux packs (c, ph, pw): token 0 holds channel 0's 2x2 patch first
    assert torch.equal(tokens[0, 0, :4], x[0, 0, 0, :2, :2].reshape(-1))


def test_rope_matches_complex_rotation_and_is_relative():
    ids = video_position_ids(2, 3, 4)
    assert ids.shape == (24, 3) and ids[-1].tolist() == [1, 2, 3] and ids[4].tolist() == [0, 1, 0]
    axes, theta = [4, 6, 6], 10000.0
    cos, sin = rope_cos_sin(ids, axes, theta)
    q = torch.randn(1, 1, 24, 16)
    rotated = apply_rope(q, cos[None, None], sin[None, None])
    # reference: treat adjacent pairs as complex numbers and multiply by e^{i * pos * freq}
    freqs = torch.cat(
        [ids[:, i : i + 1].double() / theta ** (torch.arange(0, d, 2).double() / d) for i, d in enumerate(axes)], dim=1
    )
    qc = torch.view_as_complex(q[0, 0].double().reshape(24, 8, 2).contiguous())
    ref = torch.view_as_real(qc * torch.polar(torch.ones_like(freqs), freqs)).reshape(24, 16)
    assert torch.allclose(rotated[0, 0].double(), ref, atol=1e-5)
    assert torch.allclose(rotated.norm(dim=-1), q.norm(dim=-1), atol=1e-5)
    # relative: <R(a) u, R(b) v> depends on a - b only
    u, v = torch.randn(16), torch.randn(16)

    def dot(pa, pb):
        c, s = rope_cos_sin(torch.tensor([pa, pb], dtype=torch.float32), axes, theta)
        r = apply_rope(torch.stack([u, v])[None, None], c[None, None], s[None, None])[0, 0]
        return float(r[0] @ r[1])

    assert dot([3, 1, 2], [1, 1, 0]) == pytest.approx(dot([5, 4, 7], [3, 4, 5]), abs=1e-4)


@pytest.mark.parametrize("shape", [(2, 3, 37, 16), (1, 4, 130, 64), (3, 1, 5, 8)])
def test_attention_backends_agree_with_the_math_reference(shape):
    """Every kernel this process can run (on CPU: SDPA) matches the plain softmax(QK^T)V, values and
    gradients; `auto` resolves to SDPA on CPU; a flash kernel asked for explicitly fails clearly."""
    g = torch.Generator().manual_seed(0)
    leaves = [torch.randn(*shape, generator=g, requires_grad=True) for _ in range(3)]
    manual = torch.softmax(leaves[0] @ leaves[1].transpose(-1, -2) / math.sqrt(shape[-1]), -1) @ leaves[2]
    assert torch.allclose(attention(*leaves, "math"), manual, atol=1e-5)
    ref_grads = torch.autograd.grad(manual.pow(2).sum(), leaves)
    backends = available_backends() + ["auto"]
    assert "sdpa" in backends
    for backend in backends:
        out = attention(*leaves, backend)
        assert torch.allclose(out, manual, atol=1e-5), backend
        grads = torch.autograd.grad(out.pow(2).sum(), leaves)
        assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(grads, ref_grads)), backend
    assert resolve_backend("auto", leaves[0]) == "sdpa"
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention(*leaves, "nope")
    for flash in ("flash2", "flash3"):
        with pytest.raises(RuntimeError, match=f"attention backend {flash}"):
            attention(*leaves, flash)


def test_whole_model_sdpa_equals_math():
    torch.manual_seed(0)
    fast, slow = MMDiT(tiny_mmdit(attention_backend="sdpa")), MMDiT(tiny_mmdit(attention_backend="math"))
    for p in fast.parameters():
        torch.nn.init.normal_(p, std=0.1)
    slow.load_state_dict(fast.state_dict())
    x, t, txt, y = inputs()
    a, b = fast(x, t, txt, y), slow(x, t, txt, y)
    assert torch.allclose(a, b, atol=1e-5)
    a.pow(2).mean().backward()
    b.pow(2).mean().backward()
    for (name, p), q in zip(fast.named_parameters(), slow.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-4), name


def test_video_positions_put_time_on_rope_axis_0_and_text_at_zero():
    """forward() on latents is forward_tokens() on packed tokens with ids (frame, row, col) and text ids 0;
    at one frame this is Flux's image layout (axis 0 unused)."""
    torch.manual_seed(0)
    model = MMDiT(TINY)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x, t, txt, y = inputs(t=3, h=4, w=6)
    ids = torch.tensor([[f, r, c] for f in range(3) for r in range(2) for c in range(3)], dtype=torch.float32)
    tokens = model.forward_tokens(patchify(x, [1, 2, 2]), ids, txt, torch.zeros(5, 3), t, y)
    assert torch.allclose(model(x, t, txt, y), unpatchify(tokens, [1, 2, 2], (3, 2, 3)), atol=1e-6)
    flat = ids.clone()  # frames matter: a constant time axis gives another output
    flat[:, 0] = 0
    assert not torch.allclose(model.forward_tokens(patchify(x, [1, 2, 2]), flat, txt, torch.zeros(5, 3), t, y), tokens)


def test_rope_reference_grid_interpolates_larger_grids_only():
    """model.rope_reference_grid: a grid larger than the reference gets its spatial positions scaled into
    the reference's range (time untouched); a grid at or below it keeps Flux's integer positions."""
    ids = video_position_ids(2, 6, 3, reference_grid=[4, 4])
    assert torch.equal(ids[:, 0].unique(), torch.tensor([0.0, 1.0]))
    assert torch.allclose(ids[:, 1].unique(), torch.arange(6) * 4 / 6) and ids[:, 1].max() < 4
    assert torch.equal(ids[:, 2].unique(), torch.arange(3.0))  # 3 <= 4: integers
    assert torch.equal(video_position_ids(2, 4, 4, reference_grid=[4, 4]), video_position_ids(2, 4, 4))
    torch.manual_seed(0)
    model = MMDiT(TINY)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    scaled = MMDiT(tiny_mmdit(rope_reference_grid=[2, 2]))
    scaled.load_state_dict(model.state_dict())
    x, t, txt, y = inputs(t=2, h=4, w=4)  # patch 2: a 2x2 token grid, the reference itself
    assert torch.equal(scaled(x, t, txt, y), model(x, t, txt, y))
    x, t, txt, y = inputs(t=2, h=8, w=8)  # 4x4 tokens: positions 0, 0.5, 1, 1.5
    ids = torch.tensor([[f, r / 2, c / 2] for f in range(2) for r in range(4) for c in range(4)])
    tokens = model.forward_tokens(patchify(x, [1, 2, 2]), ids, txt, torch.zeros(5, 3), t, y)
    want = unpatchify(tokens, [1, 2, 2], (2, 4, 4))
    err = (scaled(x, t, txt, y) - want).abs().max()
    assert err < 1e-6 and (model(x, t, txt, y) - want).abs().max() > 100 * err  # integer positions differ


def test_activation_checkpointing_keeps_values_gradients_and_names():
    torch.manual_seed(0)
    plain = MMDiT(tiny_mmdit(depth=2, depth_single_blocks=3))
    for p in plain.parameters():
        torch.nn.init.normal_(p, std=0.1)
    ckpt = MMDiT(plain.cfg)
    ckpt.load_state_dict(plain.state_dict())
    counts = {"double_blocks": 1, "single_blocks": 99}
    assert apply_activation_checkpointing(FLUX.blocks(ckpt), counts) == 4  # one double block, every single block
    assert type(ckpt.double_blocks[1]) is type(plain.double_blocks[1])  # the second double block stays plain
    assert {clean_key(k) for k in ckpt.state_dict()} == set(plain.state_dict())
    x, t, txt, y = inputs()
    a, b = plain(x, t, txt, y), ckpt(x, t, txt, y)
    assert torch.equal(a, b)
    a.pow(2).mean().backward()
    b.pow(2).mean().backward()
    grads = {clean_key(n): p.grad for n, p in ckpt.named_parameters()}
    for name, p in plain.named_parameters():
        assert torch.allclose(p.grad, grads[name], atol=1e-6), name


def test_bad_architecture_is_rejected():
    with pytest.raises(ValueError, match="axes_dim"):
        MMDiT(tiny_mmdit(axes_dim=[8, 8, 10]))
