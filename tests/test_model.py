"""The MMDiT: Flux parameter names, shapes, RoPE, attention kernels, and the I2V hand-off property."""

import math

import pytest
import torch
from conftest import tiny_mmdit

from opensora_lite.models.attention import attention, available_backends
from opensora_lite.models.mmdit import MMDiT, patchify, unpatchify
from opensora_lite.models.rope import apply_rope, rope_cos_sin, video_position_ids

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


def test_attention_backends_agree_with_the_math_reference():
    q, k, v = (torch.randn(2, 3, 37, 16) for _ in range(3))
    ref = attention(q, k, v, "math")
    for backend in available_backends():
        assert torch.allclose(attention(q, k, v, backend), ref, atol=1e-5), backend
    manual = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(16), -1) @ v
    assert torch.allclose(ref, manual, atol=1e-5)
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention(q, k, v, "nope")


def test_bad_architecture_is_rejected():
    with pytest.raises(ValueError, match="axes_dim"):
        MMDiT(tiny_mmdit(axes_dim=[8, 8, 10]))
