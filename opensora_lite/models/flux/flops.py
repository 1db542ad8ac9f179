"""Analytic FLOPs of the MMDiT per sample, for MFU.

Counts every matrix multiply (2 FLOPs per multiply-add) at the actual sequence lengths: the linears of
each block and both attention products (QK^T and PV) over the joint text + video sequence. Elementwise
work (norms, RoPE, activations, softmax) is left out, as hardware peak figures count only matmuls.

Training FLOPs are forward + backward. Backward costs two matmuls per forward one (gradients for the
input and for the weight), except in the input layers whose inputs need no gradient (img_in, cond_in,
txt_in and the first linear of each embedder), where only the weight gradient is computed. Attention
backward is twice its forward (dQ, dK from dS; dV and dP from dO).
"""

from __future__ import annotations

from opensora_lite.models.flux.model import MMDiTConfig
from opensora_lite.models.spec import FlopCount

TIME_DIM = 256  # sinusoidal timestep / guidance embedding width


def mmdit_flops(
    cfg: MMDiTConfig, img_tokens: int, txt_tokens: int, image_condition: bool = False, audio_tokens: int = 0
) -> FlopCount:
    """FLOPs for one sample of img_tokens video tokens (after patchifying) and txt_tokens T5 tokens, and
    audio_tokens audio tokens through the audio stream (a model with one; 0: a video-only step)."""
    h, li, lt = cfg.hidden_size, img_tokens, txt_tokens
    pt, ph, pw = cfg.patch_size
    cond_dim = (cfg.latent_channels + 1) * pt * ph * pw

    def linear(tokens: int, d_in: int, d_out: int) -> float:
        return 2.0 * tokens * d_in * d_out

    # Input layers: backward computes only the weight gradient.
    inputs = linear(li, cfg.patch_dim, h) + linear(lt, cfg.context_in_dim, h)
    inputs += linear(1, TIME_DIM, h) + linear(1, cfg.vec_in_dim, h)
    if image_condition:
        inputs += linear(li, cond_dim, h)
    if cfg.guidance_embed:
        inputs += linear(1, TIME_DIM, h)

    # Everything else: backward is twice the forward.
    rest = linear(1, h, h) * (3 if cfg.guidance_embed else 2)  # second linear of each embedder
    double, single, attention = block_forward_flops(cfg, li, lt)
    final = linear(1, h, 2 * h) + linear(li, h, cfg.patch_dim)
    rest += cfg.depth * double + cfg.depth_single_blocks * single + final
    attn = (cfg.depth + cfg.depth_single_blocks) * attention
    if cfg.audio is not None and audio_tokens:
        a = cfg.audio
        inputs += linear(audio_tokens, a.token_dim, a.hidden_size) + linear(1, TIME_DIM, h)  # audio_in, its time_in
        linears, attention = audio_block_forward_flops(cfg, li, lt, audio_tokens)
        rest += linear(1, h, h) + cfg.depth * linears  # time_in's second linear, the blocks
        rest += linear(1, h, 2 * a.hidden_size) + linear(audio_tokens, a.hidden_size, a.token_dim)  # final layer
        attn += cfg.depth * attention
    forward = inputs + rest + attn
    return FlopCount(forward=forward, backward=inputs + 2 * rest + 2 * attn)


def audio_block_forward_flops(cfg: MMDiTConfig, img_tokens: int, txt_tokens: int, audio_tokens: int):
    """Forward FLOPs of one audio block without attention, and of its two attentions (audio queries over
    text + audio + video keys; video queries over audio keys)."""
    a, h = cfg.audio, cfg.hidden_size
    d, la, li, lt = a.hidden_size, audio_tokens, img_tokens, txt_tokens
    mlp = int(d * a.mlp_ratio)

    def linear(tokens: int, d_in: int, d_out: int) -> float:
        return 2.0 * tokens * d_in * d_out

    linears = (
        linear(1, h, 6 * d)  # modulation
        + linear(la, d, d)
        + linear(la, d, 2 * d)  # q, audio k/v
        + linear(lt, h, 2 * d)
        + linear(li, h, 2 * d)  # text and video k/v
        + linear(la, d, d)
        + linear(la, d, mlp)
        + linear(la, mlp, d)  # projection, MLP
        + linear(li, h, d)
        + linear(la, d, 2 * d)
        + linear(li, d, h)  # audio -> video: q, k/v, output
        + linear(1, h, h)  # its gate
    )
    attention = 4.0 * la * (lt + la + li) * d + 4.0 * li * la * d
    return linears, attention


def block_forward_flops(cfg: MMDiTConfig, img_tokens: int, txt_tokens: int) -> tuple[float, float, float]:
    """Forward FLOPs of one double block and one single block without attention, and of the attention
    (QK^T and PV over all heads) inside either: what activation checkpointing recomputes per block."""
    h, seq = cfg.hidden_size, img_tokens + txt_tokens
    mlp = int(h * cfg.mlp_ratio)

    def linear(tokens: int, d_in: int, d_out: int) -> float:
        return 2.0 * tokens * d_in * d_out

    double = (
        2 * linear(1, h, 6 * h)  # img_mod, txt_mod
        + linear(seq, h, 3 * h)  # qkv of both streams
        + linear(seq, h, h)  # output projections
        + linear(seq, h, mlp)
        + linear(seq, mlp, h)  # MLPs
    )
    single = linear(1, h, 3 * h) + linear(seq, h, 3 * h + mlp) + linear(seq, h + mlp, h)
    return double, single, 4.0 * seq * seq * h
