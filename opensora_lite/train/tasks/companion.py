"""A model a task trains beside the loop's (an autoencoder stage's discriminator, a distill stage's
critic), with its own AdamW.

Placed by the engine (Engine.shard_companion): sharded like the loop's model under fsdp2, where FSDP
reduce-scatters its gradients in backward; replicated whole on every other engine, where its gradients are
averaged over ranks with one all-reduce before each of its steps. Either way every engine trains it alike.
Its weights and optimizer state are a DCP folder of each mid-stage checkpoint (`<name>_dcp/`, written by
every rank, each its shards), so a resume continues bitwise, on any world size."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from opensora_lite.checkpoint import dcp as dcp_files


class Companion:
    def __init__(self, name: str, module: nn.Module, lr: float, betas, eps: float, grad_clip: float):
        self.name, self.module = name, module
        self.opt = torch.optim.AdamW(module.parameters(), lr=lr, betas=tuple(betas), eps=eps)
        self.grad_clip = grad_clip

    @property
    def sharded(self) -> bool:
        """Its parameters are shards (DTensors of an FSDP-sharded module): FSDP reduces their gradients."""
        return any(hasattr(p, "device_mesh") for p in self.module.parameters())

    def step(self, world_size: int) -> None:
        """Average the gradients over the ranks (where FSDP has not), clip, step, clear."""
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        if world_size > 1 and grads and not self.sharded:
            flat = torch.cat([g.flatten() for g in grads])
            dist.all_reduce(flat)
            flat /= world_size
            at = 0
            for g in grads:
                g.copy_(flat[at : at + g.numel()].view_as(g))
                at += g.numel()
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def folder(self, checkpoint: Path) -> Path:
        return Path(checkpoint) / f"{self.name}_dcp"

    def save(self, checkpoint: Path) -> None:
        """Weights and optimizer state into the checkpoint folder (every rank calls it)."""
        dcp_files.save_module(self.folder(checkpoint), self.module, self.opt)

    def load(self, checkpoint: Path) -> None:
        """What save() wrote (every rank calls it; any world size)."""
        dcp_files.load_module(self.folder(checkpoint), self.module, self.opt, f"the {self.name}")
