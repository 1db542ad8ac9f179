"""A LoRA stage (`stage.lora.rank` > 0): what the trainer does differently, in one place.

The base weights come from the stage's `init` every time the stage starts, resumed or not (they are
frozen, so they are what init gives); peft adapters go on top (models/lora.py); only the trainable
tensors (adapters, and cond_in when trained) and their optimizer state go into mid-stage checkpoints
(`adapters.safetensors`). The stage's `final/` holds the merged model (`model.safetensors`, plain BFL
names, so a next stage, osl-sample and osl-export read it as any stage's) and the adapters beside it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from opensora_lite.checkpoint.files import clean_key, write_safetensors
from opensora_lite.config.schema import StageConfig
from opensora_lite.layout import ADAPTER_FILE
from opensora_lite.models.lora import adapter_metadata, apply_lora, cast_frozen, lora_scale, merge_adapters, stored_name

log = logging.getLogger("opensora_lite")


class StageLora:
    def __init__(self, stage: StageConfig, engine, run_dtype: str, spec):
        self.cfg = stage.lora
        self.engine, self.spec = engine, spec  # the model family's (its LoRA target groups and names)
        self.scale = lora_scale(self.cfg.rank, self.cfg.alpha)
        self.metadata = adapter_metadata(self.cfg.rank, self.cfg.alpha, list(self.cfg.targets), spec.lora_naming)
        self.base_dtype = self._base_dtype(run_dtype)

    def _base_dtype(self, run_dtype: str) -> torch.dtype:
        name = self.cfg.base_dtype
        if name == "auto":
            gpu_bf16 = self.engine.device.type == "cuda" and run_dtype == "bf16"
            name = "bf16" if gpu_bf16 and self.engine.cfg.engine in ("single", "ddp") else "fp32"
        return torch.bfloat16 if name == "bf16" else torch.float32

    def prepare(self, model: nn.Module, name: str) -> None:
        """Adapters on the model (its base weights already loaded), base frozen (and cast)."""
        also = self.spec.lora_also_train if self.cfg.train_cond_in else ()
        targets = apply_lora(
            model, self.cfg.rank, self.cfg.alpha, self.cfg.dropout, list(self.cfg.targets), self.spec.lora_groups, also
        )
        if self.base_dtype != torch.float32:
            cast_frozen(model, self.base_dtype)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        log.info(
            "[%s] LoRA rank %d alpha %g on %d linears (%s): %.3fM of %.2fM parameters train; base in %s",
            name,
            self.cfg.rank,
            self.cfg.alpha,
            len(targets),
            ", ".join(self.cfg.targets),
            trainable / 1e6,
            total / 1e6,
            str(self.base_dtype).removeprefix("torch."),
        )

    def trainable(self, model: nn.Module) -> set[str]:
        return {clean_key(n) for n, p in self.engine.unwrap(model).named_parameters() if p.requires_grad}

    def save(self, folder: Path, model: nn.Module) -> None:
        """(every rank) The trainable tensors of a mid-stage checkpoint: adapters.safetensors from rank 0."""
        weights = self.engine.trainable_weights(model)
        if self.engine.is_main:
            write_safetensors({stored_name(k): v for k, v in weights.items()}, folder / ADAPTER_FILE, self.metadata)

    def split(self, model: nn.Module, full: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        """A gathered full state (peft names) -> (merged BFL weights, stored adapters)."""
        names = self.trainable(model)
        adapters = {stored_name(k): v for k, v in full.items() if k in names}
        return merge_adapters(full, self.scale), adapters
