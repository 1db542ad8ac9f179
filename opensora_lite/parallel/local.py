"""Engines that keep full weights on every rank: `single` (one process) and `ddp` (replicated)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from opensora_lite.parallel.engine import Blocks, Engine


class LocalEngine(Engine):
    def wrap(self, model: nn.Module, blocks: Blocks) -> nn.Module:
        model = super().wrap(model, blocks)  # AC, device, compile per block
        if self.cfg.engine == "ddp" and self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        return model

    def backward(self, model: nn.Module, loss: torch.Tensor, sync: bool = True) -> None:
        if sync or not isinstance(model, DistributedDataParallel):
            loss.backward()
            return
        with model.no_sync():  # gradients accumulate locally; the last micro-batch's backward reduces them
            loss.backward()

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model.module if isinstance(model, DistributedDataParallel) else model
