"""A model a task trains beside the loop's (an autoencoder stage's discriminator, a distill stage's
critic): replicated on every rank, never sharded, with its own AdamW. Its gradients are averaged over
ranks with one all-reduce before each of its steps, so every engine trains it alike; its weights and
optimizer state travel in the trainer state of the stage's checkpoints (tensors in safetensors)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class Companion:
    def __init__(self, module: nn.Module, lr: float, betas, eps: float, grad_clip: float):
        self.module = module
        self.opt = torch.optim.AdamW(module.parameters(), lr=lr, betas=tuple(betas), eps=eps)
        self.grad_clip = grad_clip

    def step(self, world_size: int) -> None:
        """Average the gradients over the ranks, clip, step, clear."""
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        if world_size > 1 and grads:
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

    def state_dict(self) -> tuple[dict, dict]:
        """(weights on the host, optimizer state with string keys: the trainer state's JSON needs them)."""
        opt = self.opt.state_dict()
        weights = {k: v.detach().cpu() for k, v in self.module.state_dict().items()}
        return weights, {"state": {str(k): v for k, v in opt["state"].items()}, "param_groups": opt["param_groups"]}

    def load_state_dict(self, weights: dict, opt: dict) -> None:
        self.module.load_state_dict(weights)
        groups = [{**g, "betas": tuple(g["betas"])} for g in opt["param_groups"]]
        self.opt.load_state_dict({"state": {int(k): v for k, v in opt["state"].items()}, "param_groups": groups})
