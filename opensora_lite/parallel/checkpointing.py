"""Applied to a model's repeated blocks from outside the model: selective activation checkpointing (as
Open-Sora: a number of blocks per group) and torch.compile per block (`parallel.compile`). The blocks
come from the model's spec (models/spec.py), so nothing here names a model's layers."""

from __future__ import annotations

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper


def apply_activation_checkpointing(blocks: dict[str, nn.ModuleList], counts: dict[str, int]) -> int:
    """Recompute in backward the first `counts[group]` blocks of each group (a count above the group's
    depth means all of it). Returns how many blocks were wrapped."""
    wrapped = 0
    for group, count in counts.items():
        if group not in blocks:  # (validated at start-up against the model's block groups)
            raise KeyError(f"parallel.ac_blocks.{group}: the model has no block group {group!r} ({list(blocks)})")
        chain = blocks[group]
        for i in range(min(count, len(chain))):
            chain[i] = checkpoint_wrapper(chain[i], preserve_rng_state=False)
            wrapped += 1
    return wrapped


def compile_blocks(blocks: dict[str, nn.ModuleList], backend: str = "inductor") -> int:
    """torch.compile each block on its own (not the whole model): the blocks of one group share one
    compiled graph, and AC wrappers and FSDP2 sharding still see one module per block. Call after
    activation checkpointing. Returns how many blocks were compiled."""
    every = [block for chain in blocks.values() for block in chain]
    for block in every:
        block.compile(backend=backend)
    return len(every)
