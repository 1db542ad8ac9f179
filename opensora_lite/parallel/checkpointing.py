"""Applied to the model's blocks from outside the model: selective activation checkpointing (as Open-Sora:
per block type) and torch.compile per block (`parallel.compile`)."""

from __future__ import annotations

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper


def apply_activation_checkpointing(model: nn.Module, double_blocks: int, single_blocks: int) -> int:
    """Recompute the first `double_blocks` double-stream and `single_blocks` single-stream blocks in
    backward. Counts above the depth mean all. Returns how many blocks were wrapped."""
    wrapped = 0
    for name, count in (("double_blocks", double_blocks), ("single_blocks", single_blocks)):
        blocks: nn.ModuleList = getattr(model, name, [])  # (a model without such blocks: an autoencoder)
        for i in range(min(count, len(blocks))):
            blocks[i] = checkpoint_wrapper(blocks[i], preserve_rng_state=False)
            wrapped += 1
    return wrapped


def compile_blocks(model: nn.Module, backend: str = "inductor") -> int:
    """torch.compile each double- and single-stream block on its own (not the whole model): the blocks
    of one type share one compiled graph, and AC wrappers and FSDP2 sharding still see one module per
    block. Call after activation checkpointing. Returns how many blocks were compiled."""
    blocks = [*getattr(model, "double_blocks", []), *getattr(model, "single_blocks", [])]
    for block in blocks:
        block.compile(backend=backend)
    return len(blocks)
