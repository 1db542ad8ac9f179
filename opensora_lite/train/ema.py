"""Exponential moving average of the weights, kept in fp32 on the parameters' device."""

from __future__ import annotations

import torch
from torch import nn

from opensora_lite.checkpoint.files import clean_key


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        # Keys are the model's own names (wrapper prefixes removed) so EMA weights export like the model's.
        self.shadow = {clean_key(k): p.detach().float().clone() for k, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            shadow = self.shadow.get(clean_key(name))
            if shadow is not None:
                shadow.lerp_(p.detach().float(), 1 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full tensors on CPU (sharded shadows are gathered: every rank must call this)."""
        return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).cpu() for k, v in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            if k in self.shadow:
                shadow = self.shadow[k]
                if hasattr(shadow, "device_mesh"):  # a shard: take this rank's piece of the full tensor
                    from torch.distributed.tensor import distribute_tensor

                    v = distribute_tensor(v.to(shadow.device), shadow.device_mesh, shadow.placements)
                shadow.copy_(v)
