"""Selective activation checkpointing applied from outside the model (as Open-Sora: per block type)."""

from __future__ import annotations

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper


def apply_activation_checkpointing(model: nn.Module, double_blocks: int, single_blocks: int) -> int:
    """Recompute the first `double_blocks` double-stream and `single_blocks` single-stream blocks in
    backward. Counts above the depth mean all. Returns how many blocks were wrapped."""
    wrapped = 0
    for name, count in (("double_blocks", double_blocks), ("single_blocks", single_blocks)):
        blocks: nn.ModuleList = getattr(model, name)
        for i in range(min(count, len(blocks))):
            blocks[i] = checkpoint_wrapper(blocks[i], preserve_rng_state=False)
            wrapped += 1
    return wrapped
