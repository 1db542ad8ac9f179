"""The analytic FLOPs counter (used for MFU) agrees with torch's FlopCounterMode on real forward and
backward passes, small shapes on CPU and a Flux-dev-width model at 256px x 33 latent frames on the
meta device (shapes only, no arithmetic)."""

import pytest
import torch
from conftest import tiny_mmdit
from torch.utils.flop_counter import FlopCounterMode

from opensora_lite.models.flux.flops import mmdit_flops
from opensora_lite.models.flux.model import MMDiT


def _measure(model: MMDiT, batch: int, grid: tuple[int, int, int], txt_tokens: int, device: str, cond: bool):
    cfg = model.cfg
    pt, ph, pw = cfg.patch_size
    t, h, w = grid
    kw = dict(device=device)
    x = torch.randn(batch, cfg.latent_channels, t * pt, h * ph, w * pw, **kw)
    txt = torch.randn(batch, txt_tokens, cfg.context_in_dim, **kw)
    y = torch.randn(batch, cfg.vec_in_dim, **kw)
    ts = torch.rand(batch, **kw)
    extra = {}
    if cond:
        extra["cond"] = torch.randn(batch, cfg.latent_channels + 1, t * pt, h * ph, w * pw, **kw)
    if cfg.guidance_embed:
        extra["guidance"] = torch.full((batch,), 3.5, **kw)
    with FlopCounterMode(display=False) as fwd:
        out = model(x, ts, txt, y, **extra)
    with FlopCounterMode(display=False) as bwd:
        out.float().pow(2).mean().backward()
    return fwd.get_total_flops() / batch, bwd.get_total_flops() / batch


@pytest.mark.parametrize(
    "changes, grid, txt_tokens, cond",
    [
        ({}, (3, 4, 5), 7, False),
        ({"guidance_embed": True, "mlp_ratio": 3.0}, (1, 6, 6), 11, False),
        ({"depth": 1, "depth_single_blocks": 3}, (5, 2, 3), 4, True),
    ],
)
def test_counts_match_flop_counter_on_small_models(changes, grid, txt_tokens, cond):
    cfg = tiny_mmdit(attention_backend="math", **changes)  # math: attention as plain matmuls
    model = MMDiT(cfg, image_condition=cond)
    fwd, bwd = _measure(model, 2, grid, txt_tokens, "cpu", cond)
    expected = mmdit_flops(cfg, grid[0] * grid[1] * grid[2], txt_tokens, image_condition=cond)
    assert expected.forward == pytest.approx(fwd, rel=0.02)
    assert expected.backward == pytest.approx(bwd, rel=0.02)


def test_flux_dev_width_at_256px_33_latent_frames():
    # FLUX.1-dev widths (3072 hidden, 24 heads, 16 latent channels, 2x2 patches), 2 + 2 blocks;
    # 256px through an 8x VAE and 2x2 patches is a 16 x 16 token grid, over 33 latent frames.
    cfg = tiny_mmdit(
        latent_channels=16,
        hidden_size=3072,
        num_heads=24,
        axes_dim=[16, 56, 56],
        context_in_dim=4096,
        vec_in_dim=768,
        attention_backend="math",
    )
    with torch.device("meta"):
        model = MMDiT(cfg)
    fwd, bwd = _measure(model, 1, (33, 16, 16), 512, "meta", False)
    expected = mmdit_flops(cfg, 33 * 16 * 16, 512)
    assert expected.forward == pytest.approx(fwd, rel=0.02)
    assert expected.backward == pytest.approx(bwd, rel=0.02)
    assert expected.train > 3e13  # ~36 TFLOPs per sample for four blocks: the scale is real


def test_mfu_peak_follows_the_precision_the_matrix_products_run_in():
    """An fp32 run on a GPU runs its matrix products on TF32 tensor cores (run.tf32, on by default) and its
    MFU is taken against the TF32 peak; with run.tf32=false, against the IEEE fp32 peak; bf16 autocast
    against the bf16 peak. osl-plan prices the same way."""
    from opensora_lite.config.schema import RunConfig
    from opensora_lite.dtypes import matmul_precision
    from opensora_lite.models.flops import peak_for

    assert RunConfig().tf32 is True
    assert [matmul_precision("fp32", True), matmul_precision("fp32", False), matmul_precision("bf16", False)] == [
        "tf32",
        "fp32",
        "bf16",
    ]
    h100 = "NVIDIA H100 80GB HBM3"
    assert (peak_for(h100, "bf16"), peak_for(h100, "tf32"), peak_for(h100, "fp32")) == (989.4, 494.7, 66.9)
    assert peak_for("NVIDIA H200", "tf32") == 494.7 and peak_for("some other GPU", "tf32") is None


def test_tf32_switch_leaves_cpu_products_alone():
    """set_tf32 flips only CUDA kernels' switches: a CPU matrix product and convolution compute bitwise
    what they computed before (CPU runs stay exactly as they were)."""
    from opensora_lite.dtypes import set_tf32

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 96, generator=g), torch.randn(96, 80, generator=g)
    x, w = torch.randn(1, 3, 9, 9, generator=g), torch.randn(4, 3, 3, 3, generator=g)
    before = (a @ b, torch.nn.functional.conv2d(x, w))
    was = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    try:
        set_tf32(True)
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
        after = (a @ b, torch.nn.functional.conv2d(x, w))
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = was
    assert all(torch.equal(p, q) for p, q in zip(before, after))
