"""The Wan transformer: diffusers' WanTransformer3DModel, built from a WanConfig, with our glue.

Two changes to what diffusers builds, both from outside its classes:
- the RoPE tables are plain tensors computed on the CPU, not buffers. diffusers registers them as
  non-persistent buffers: built on the meta device they would stay empty after `to_empty` (no
  checkpoint holds them), and `model.to(bf16)` would round them. Here they are moved to the input's
  device on first use (as the original Wan code keeps `freqs` out of the buffers).
- from-scratch values follow the original Wan release's recipe (xavier-uniform linears, zero biases,
  N(0, 0.02) text and time embedders, a zero output projection; the modulation tables randn/sqrt(dim)
  as diffusers draws them), each tensor from its own generator seeded by one draw of the global RNG
  and the tensor's name. diffusers' constructor runs on meta (its own init would be overwritten), then
  the parameters are allocated and filled. So a model built on meta and sharded gets, tensor by tensor,
  bitwise what the CPU build gives (`initial_tensors`), and both draw the global RNG exactly once.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator

import torch
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed, WanTransformer3DModel
from torch import Tensor, nn

from opensora_lite.errors import ConfigError
from opensora_lite.models.wan.config import ATTENTION_BACKENDS, WanConfig

# our attention_backend names -> diffusers' attention dispatch (None: its default, torch SDPA)
_DIFFUSERS_BACKEND = {"auto": None, "sdpa": None, "flash2": "flash", "flash3": "_flash_3", "math": "_native_math"}
_NORMAL_002 = ("condition_embedder.text_embedder.", "condition_embedder.time_embedder.")
_ZERO = ("proj_out.weight",)


class WanRope(WanRotaryPosEmbed):
    """diffusers' Wan RoPE, its cos/sin tables kept as CPU float32 attributes (see the module doc)."""

    def __init__(self, attention_head_dim: int, patch_size: tuple[int, int, int], max_seq_len: int):
        with torch.device("cpu"):  # real values even when the model is built on meta
            super().__init__(attention_head_dim, patch_size, max_seq_len)
        self._tables = (self._buffers.pop("freqs_cos"), self._buffers.pop("freqs_sin"))
        self.freqs_cos, self.freqs_sin = self._tables

    def forward(self, hidden_states: Tensor) -> tuple[Tensor, Tensor]:
        if self.freqs_cos.device != hidden_states.device:
            self.freqs_cos, self.freqs_sin = (t.to(hidden_states.device) for t in self._tables)
        return super().forward(hidden_states)


def diffusers_kwargs(cfg: WanConfig) -> dict:
    """WanTransformer3DModel's constructor arguments (its config.json) for `cfg`."""
    return dict(
        patch_size=tuple(cfg.patch_size),
        num_attention_heads=cfg.num_attention_heads,
        attention_head_dim=cfg.attention_head_dim,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        text_dim=cfg.text_dim,
        freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim,
        num_layers=cfg.num_layers,
        cross_attn_norm=cfg.cross_attn_norm,
        qk_norm="rms_norm_across_heads",
        eps=cfg.eps,
        rope_max_seq_len=cfg.rope_max_seq_len,
    )


def build_wan(cfg: WanConfig) -> WanTransformer3DModel:
    """The model of `cfg`, initialised from scratch (one draw of the global RNG). Inside
    torch.device("meta") it stays on meta, nothing is drawn, and initial_tensors gives the values later."""
    if cfg.attention_backend not in ATTENTION_BACKENDS:
        raise ConfigError("model.attention_backend", f"{cfg.attention_backend!r} is not one of {ATTENTION_BACKENDS}")
    device = torch.get_default_device()
    with torch.device("meta"):  # diffusers' own init would be overwritten: skip it (40% of a CPU build)
        model = WanTransformer3DModel(**diffusers_kwargs(cfg))
    model.rope = WanRope(cfg.attention_head_dim, tuple(cfg.patch_size), cfg.rope_max_seq_len)
    backend = _DIFFUSERS_BACKEND[cfg.attention_backend]
    if backend is not None:
        try:
            model.set_attention_backend(backend)
        except Exception as e:  # the flash-attn package missing
            raise ConfigError("model.attention_backend", f"{cfg.attention_backend}: {e}") from None
    if device.type != "meta":
        model.to_empty(device=device)  # parameters only: the model holds no buffers
        with torch.no_grad():
            for name, value in initial_tensors(model):
                model.get_parameter(name).copy_(value)
    return model


def _init_seed() -> int:
    return int(torch.randint(0, 2**62, (1,), device="cpu").item())


def _initial(name: str, shape: tuple[int, ...], linears: set[str], seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed ^ zlib.crc32(name.encode()))
    out = torch.empty(shape)
    module = name.rsplit(".", 1)[0]
    if name.endswith(".bias") or name in _ZERO:
        return out.zero_()
    if name.endswith("scale_shift_table"):
        return out.normal_(generator=gen).div_(math.sqrt(shape[-1]))
    if name == "patch_embedding.weight":  # a linear over patches: xavier over (out, in * patch)
        bound = math.sqrt(6.0 / (shape[0] + math.prod(shape[1:])))
        return out.uniform_(-bound, bound, generator=gen)
    if module in linears and name.endswith(".weight"):
        if name.startswith(_NORMAL_002):
            return out.normal_(0.0, 0.02, generator=gen)
        return nn.init.xavier_uniform_(out, generator=gen)
    if ".norm" in name and name.endswith(".weight"):  # QK RMS norms, the cross-attention LayerNorm
        return out.fill_(1.0)
    raise RuntimeError(f"the Wan init does not know how {name} is initialised")


def initial_tensors(model: nn.Module, names: set[str] | None = None) -> Iterator[tuple[str, Tensor]]:
    """(name, full tensor) of the from-scratch init, one at a time, in diffusers' names (wrapper
    prefixes removed). Draws the global RNG once, as build_wan does; `names`: yield only these."""
    from opensora_lite.checkpoint.files import clean_key

    seed = _init_seed()
    linears = {clean_key(n) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    for name, p in model.named_parameters():
        key = clean_key(name)
        if names is None or key in names:
            yield key, _initial(key, tuple(p.shape), linears, seed)
