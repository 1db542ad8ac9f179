"""Analytic FLOPs of a Wan transformer per sample, for MFU and the planner.

Counts the matrix multiplies (2 FLOPs per multiply-add), as models/flops.py does for the MMDiT: the
patch embedding (a strided Conv3d, i.e. a linear over patches), the text embedder (two linears over the
text tokens), the time embedder and its projection to the six modulations (one token per sample), per
block the self-attention (q/k/v/out over the video tokens and QK^T, PV among them), the
cross-attention (q/out over the video tokens, k/v over the text tokens, QK^T and PV between them) and
the FFN, and the output projection. Norms, RoPE, modulation, activations and softmax are left out.

Backward is twice the forward (input and weight gradients), except in the input layers whose inputs
need no gradient (the patch embedding and the first linear of the text and time embedders), where only
the weight gradient is computed. Attention backward is twice its forward. Checked against
torch.utils.flop_counter on a real forward + backward (tests/test_wan.py).
"""

from __future__ import annotations

from opensora_lite.models.spec import FlopCount
from opensora_lite.models.wan.config import WanConfig


def _linear(tokens: int, d_in: int, d_out: int) -> float:
    return 2.0 * tokens * d_in * d_out


def wan_block_flops(cfg: WanConfig, video_tokens: int, text_tokens: int) -> tuple[float, float]:
    """Forward FLOPs of one block: its linears, and its attention products (self and cross)."""
    d, li, lt = cfg.hidden_size, video_tokens, text_tokens
    linears = (
        4 * _linear(li, d, d)  # self-attention q, k, v, out
        + 2 * _linear(li, d, d)  # cross-attention q, out
        + 2 * _linear(lt, d, d)  # cross-attention k, v over the text tokens
        + _linear(li, d, cfg.ffn_dim)
        + _linear(li, cfg.ffn_dim, d)
    )
    attention = 4.0 * li * li * d + 4.0 * li * lt * d  # (QK^T + PV) self, then cross
    return linears, attention


def wan_flops(cfg: WanConfig, video_tokens: int, text_tokens: int) -> FlopCount:
    """FLOPs of one sample of `video_tokens` tokens (after patching) and `text_tokens` T5 tokens."""
    d, li, lt = cfg.hidden_size, video_tokens, text_tokens
    # Input layers: backward computes only the weight gradient.
    inputs = _linear(li, cfg.patch_dim, d) + _linear(lt, cfg.text_dim, d) + _linear(1, cfg.freq_dim, d)
    # Everything else: backward is twice the forward.
    rest = _linear(lt, d, d) + _linear(1, d, d) + _linear(1, d, 6 * d)  # text, time second linears; time_proj
    linears, attention = wan_block_flops(cfg, li, lt)
    rest += cfg.num_layers * linears + _linear(li, d, cfg.patch_dim)  # blocks, proj_out
    attn = cfg.num_layers * attention
    return FlopCount(forward=inputs + rest + attn, backward=inputs + 2 * rest + 2 * attn)
