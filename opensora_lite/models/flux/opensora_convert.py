"""Open-Sora 2.0 MMDiT checkpoints (Open_Sora_v2.safetensors) <-> the BFL layout our MMDiT uses.

Open-Sora 2.0's model is Flux with three differences of form, all undone here (facts read from their
`opensora/models/mmdit/`, configured `fused_qkv=False, use_liger_rope=True` for the released weights):
- q, k and v are separate linears: `{img,txt}_attn.{q_proj,k_proj,v_proj}` in double blocks, and
  `q_proj`, `k_proj`, `v_mlp` (v and the MLP input in one) in single blocks, where BFL has one
  `qkv` / `linear1`;
- RoPE is applied rotate-half style (Liger's kernel): channel j of a head is paired with channel
  j + D/2, where BFL pairs 2j with 2j+1, with the same angle list. So their channel j is our 2j and
  their j + D/2 is our 2j+1. Permuting the q and k output rows (and the q/k RMSNorm scales, which act
  per channel) per head gives the same attention scores; v is not rotated and keeps its order;
- no `guidance_in` (the loader already allows it missing).
`cond_in` carries over unchanged: both sides feed it cat(mask, masked latents) patchified as
(c ph pw), mask channel first, so its 68 inputs (16 + 1 channels x 2 x 2; 129 for the in_channels 128,
patch 1 variant) mean the same thing. One table drives both directions.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from opensora_lite.errors import CheckpointError

# (BFL module, Open-Sora modules, which parts carry rotated rows). A fused BFL tensor is the
# concatenation along dim 0 of the Open-Sora parts; a one-part entry is a same-name permutation.
_DOUBLE = [
    (f"{s}_attn.{what}", parts, rope)
    for s in ("img", "txt")
    for what, parts, rope in [
        ("qkv", [f"{s}_attn.q_proj", f"{s}_attn.k_proj", f"{s}_attn.v_proj"], [True, True, False]),
        ("norm.query_norm", [f"{s}_attn.norm.query_norm"], [True]),
        ("norm.key_norm", [f"{s}_attn.norm.key_norm"], [True]),
    ]
]
_SINGLE = [
    ("linear1", ["q_proj", "k_proj", "v_mlp"], [True, True, False]),
    ("norm.query_norm", ["norm.query_norm"], [True]),
    ("norm.key_norm", ["norm.key_norm"], [True]),
]
_MARKER = re.compile(
    r"^(double_blocks\.\d+\.(img|txt)_attn\.(q_proj|k_proj|v_proj)|single_blocks\.\d+\.(q_proj|k_proj|v_mlp))\."
)


def is_opensora_state(state: dict[str, Tensor]) -> bool:
    """True for Open-Sora 2.0's split-projection names (q_proj / k_proj / v_proj / v_mlp)."""
    return any(_MARKER.match(k) for k in state)


def rotate_half_order(head_dim: int) -> Tensor:
    """Index p with rotate_half[..., i] = interleaved[..., p[i]]: [0, 2, 4, ..., 1, 3, 5, ...]."""
    return torch.cat((torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)))


def _permute_rows(t: Tensor, index: Tensor) -> Tensor:
    """Apply a per-head channel index to dim 0 of a [heads*head_dim, ...] weight, bias or norm scale."""
    d = index.numel()
    return t.reshape(t.shape[0] // d, d, *t.shape[1:])[:, index].reshape(t.shape).contiguous()


def _modules(state: dict[str, Tensor]):
    """(BFL module, Open-Sora modules, rope flags) of every block present in state (either naming)."""
    blocks = {(m.group(1), int(m.group(2))) for k in state if (m := re.match(r"(double|single)_blocks\.(\d+)\.", k))}
    for kind, i in sorted(blocks):
        for bfl, parts, rope in _DOUBLE if kind == "double" else _SINGLE:
            prefix = f"{kind}_blocks.{i}."
            yield prefix + bfl, [prefix + p for p in parts], rope


def _params(module: str) -> list[str]:
    return ["scale"] if module.endswith("_norm") else ["weight", "bias"]


def _head_dim(state: dict[str, Tensor]) -> int:
    for k, v in state.items():
        if k.endswith("norm.query_norm.scale"):
            return v.shape[0]
    raise CheckpointError("no q/k norm scale (norm.query_norm.scale) found: not an MMDiT checkpoint")


def opensora_sources(keys: list[str], source: str = "checkpoint") -> dict[str, tuple[list[str], list[bool]]]:
    """For every BFL key the Open-Sora 2.0 keys `keys` convert to: (the Open-Sora names it is the dim-0
    concatenation of, which of them carry rotate-half rows). Keys the table does not touch (img_in,
    cond_in, modulations, MLPs, final_layer, ...) map to themselves. A fused tensor with some of its
    parts absent is one error naming them (a truncated or damaged file)."""
    present_keys = set(keys)
    out, used = {}, set()
    for bfl, parts, rope in _modules(dict.fromkeys(keys)):
        for param in _params(bfl):
            names = [f"{p}.{param}" for p in parts]
            present = [n for n in names if n in present_keys]
            if not present:
                continue
            if len(present) < len(names):
                raise CheckpointError(
                    f"{source}: {bfl}.{param} needs {', '.join(names)}; only {', '.join(present)} present "
                    "(a truncated or damaged Open-Sora checkpoint)"
                )
            used.update(names)
            out[f"{bfl}.{param}"] = (names, list(rope))
    out.update({k: ([k], [False]) for k in keys if k not in used})
    return out


def to_bfl_rows(head_dim: int) -> Tensor:
    """The per-head row index taking rotate-half rows to BFL's interleaved pairs."""
    return torch.argsort(rotate_half_order(head_dim))  # interleaved[..., j] = rotate_half[..., q[j]]


def assemble(parts: list[Tensor], rope: list[bool], rows: Tensor) -> Tensor:
    """One BFL tensor from its Open-Sora parts (opensora_sources), rotated rows re-ordered by `rows`."""
    pieces = [_permute_rows(t, rows) if r else t for t, r in zip(parts, rope)]
    return torch.cat(pieces, dim=0) if len(pieces) > 1 else pieces[0]


def opensora_to_bfl(state: dict[str, Tensor], source: str = "checkpoint") -> dict[str, Tensor]:
    """Open-Sora 2.0 names and rotate-half q/k rows -> BFL names and interleaved rows."""
    rows = to_bfl_rows(_head_dim(state))
    return {
        key: assemble([state[n] for n in names], rope, rows)
        for key, (names, rope) in opensora_sources(list(state), source).items()
    }


def bfl_to_opensora(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse: BFL names into Open-Sora 2.0's (fused_qkv=False, Liger RoPE) state dict."""
    to_os = rotate_half_order(_head_dim(state))
    hidden = state["img_in.weight"].shape[0]
    out, used = {}, set()
    for bfl, parts, rope in _modules(state):
        for param in _params(bfl):
            name = f"{bfl}.{param}"
            if name not in state:
                continue
            used.add(name)
            t = state[name]
            sizes = [hidden] * (len(parts) - 1) + [t.shape[0] - hidden * (len(parts) - 1)]
            for p, piece, r in zip(parts, torch.split(t, sizes, dim=0), rope):
                out[f"{p}.{param}"] = _permute_rows(piece, to_os) if r else piece.contiguous()
    out.update({k: v for k, v in state.items() if k not in used})
    return out
