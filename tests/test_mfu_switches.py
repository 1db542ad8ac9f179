"""The MFU switches (docs/gpu-suite.md#the-mfu-switches): each off by default, each computing what the
default path computes, forward and gradients, on a tiny model."""

import pytest
import torch
from conftest import tiny_mmdit

from opensora_lite.config.schema import ParallelConfig
from opensora_lite.models.flux import SPEC as FLUX
from opensora_lite.models.flux.layers import QKNorm
from opensora_lite.models.flux.model import MMDiT
from opensora_lite.models.flux.rope import apply_rope, rope_cos_sin, video_position_ids
from opensora_lite.parallel import build_engine
from opensora_lite.parallel.checkpointing import compile_blocks


def twins(**changes):
    """The default tiny model (random, non-trivial weights: norm scales away from 1) and one built with
    `changes`, holding the same weights."""
    torch.manual_seed(0)
    plain = MMDiT(tiny_mmdit())
    for p in plain.parameters():
        torch.nn.init.normal_(p, mean=1.0 if p.dim() == 1 else 0.0, std=0.1)
    other = MMDiT(tiny_mmdit(**changes))
    other.load_state_dict(plain.state_dict())
    return plain, other


def same_function(a: MMDiT, b: MMDiT, atol: float) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, 4, 6, generator=g)
    args = (x, torch.rand(2, generator=g), torch.randn(2, 5, 16, generator=g), torch.randn(2, 8, generator=g))
    out_a, out_b = a(*args), b(*args)
    assert torch.allclose(out_a, out_b, atol=atol), (out_a - out_b).abs().max()
    (out_a - x).pow(2).mean().backward()
    (out_b - x).pow(2).mean().backward()
    grads = dict(b.named_parameters())
    for name, p in a.named_parameters():
        assert torch.allclose(p.grad, grads[name].grad, atol=atol), name


def test_switches_are_off_by_default():
    cfg = tiny_mmdit()
    assert cfg.fused_qk_norm_rope is False and ParallelConfig().compile is False


def test_fused_qk_norm_rope_computes_the_separate_path():
    plain, fused = twins(fused_qk_norm_rope=True)
    assert all(blk.fused_qk_norm_rope for blk in [*fused.double_blocks, *fused.single_blocks])
    same_function(plain, fused, atol=1e-6)


def test_fused_qk_norm_rope_rounds_once_in_bf16():
    """In bf16 the separate path rounds after the norm and again after the rotation; the fused one only
    at the end, so it lands closer to the fp64 result."""
    g = torch.Generator().manual_seed(0)
    norm = QKNorm(16)
    norm.query_norm.scale.data = 1 + 0.1 * torch.randn(16, generator=g)
    q = torch.randn(2, 2, 24, 16, generator=g).bfloat16()
    cos, sin = (t[None, None] for t in rope_cos_sin(video_position_ids(2, 3, 4), [4, 6, 6], 10000.0))
    qd = q.double()
    gold = apply_rope(
        qd * torch.rsqrt(qd.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.query_norm.scale.double(), cos, sin
    )
    fused = norm.with_rope(q, q, q, cos, sin)[0]
    separate = apply_rope(norm(q, q, q)[0], cos, sin)
    assert fused.dtype == separate.dtype == torch.bfloat16
    assert (fused.double() - gold).abs().mean() < (separate.double() - gold).abs().mean()


@pytest.mark.timeout(120)
def test_compiled_blocks_compute_the_eager_model():
    """parallel.compile compiles each block on its own when the engine wraps the model. Inductor takes
    ~90 s for this tiny model on one CPU thread, so the values are checked through aot_eager (the same
    dynamo capture and autograd graph, run without inductor's code generation)."""
    plain, compiled = twins()
    assert compile_blocks(FLUX.blocks(compiled), backend="aot_eager") == 4
    same_function(plain, compiled, atol=1e-6)
    engine = build_engine(ParallelConfig(engine="single", compile=True), "cpu")
    plain = MMDiT(tiny_mmdit())
    wrapped = engine.wrap(plain, FLUX.blocks(plain))  # compiles lazily: nothing runs here
    assert all(blk._compiled_call_impl is not None for blk in [*wrapped.double_blocks, *wrapped.single_blocks])
    assert wrapped._compiled_call_impl is None  # never the whole model


def test_fused_and_compiled_together():
    plain, both = twins(fused_qk_norm_rope=True)
    compile_blocks(FLUX.blocks(both), backend="aot_eager")
    same_function(plain, both, atol=1e-6)


def test_attention_kernel_is_chosen_once_outside_compiled_blocks(monkeypatch):
    """The engine resolves each block's attention kernel when it wraps the model, before compile: the
    compiled blocks look it up and never trace the resolution (package look-ups, the device's capability);
    the model computes what it computed when each call resolved its kernel (bitwise, eager)."""
    from opensora_lite.models import attention

    plain, chosen = twins()
    engine = build_engine(ParallelConfig(engine="single"), "cpu")
    chosen = engine.wrap(chosen, FLUX.blocks(chosen))
    cores = [m for m in chosen.modules() if isinstance(m, attention.AttentionCore)]
    assert cores and all(core.kernels[("cpu", torch.float32)] == "sdpa" for core in cores)
    same_function(plain, chosen, atol=0)  # (plain resolves on its first call, as every call did before)

    def traced(*args):
        raise AssertionError("the attention kernel was resolved inside a forward")

    monkeypatch.setattr(attention, "resolve_kernel", traced)
    plain.zero_grad(), chosen.zero_grad()
    compile_blocks(FLUX.blocks(chosen), backend="aot_eager")
    same_function(plain, chosen, atol=1e-6)
