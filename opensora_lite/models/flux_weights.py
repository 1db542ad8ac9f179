"""Load BFL-named weights (a FLUX.1 checkpoint, or a previous stage) into the MMDiT, with a report.

Keys the video model adds on purpose (`cond_in`, zero-initialised) may be missing, and `guidance_in`
may be absent on either side (Open-Sora's video model drops Flux-dev's guidance distillation). Any
other missing key or a shape mismatch is an error: it means the checkpoint does not fit the config.
bf16 checkpoints load into the model's fp32 parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from opensora_lite.errors import CheckpointError

NEW_IN_VIDEO = ("cond_in.",)
OPTIONAL = ("guidance_in.",)


@dataclass
class LoadReport:
    source: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)  # in the model, not in the checkpoint
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, not in the model

    def summary(self) -> str:
        def short(keys: list[str]) -> str:
            prefixes = sorted({k.split(".")[0] for k in keys})
            return f"{len(keys)} ({', '.join(prefixes)})" if keys else "0"

        return (
            f"loaded {self.loaded} tensors from {self.source}; "
            f"missing {short(self.missing)}; unexpected {short(self.unexpected)}"
        )


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> LoadReport:
    own = model.state_dict()
    mismatched = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if mismatched:
        k = mismatched[0]
        raise CheckpointError(
            f"{source}: {len(mismatched)} tensors do not fit the model, e.g. {k} {tuple(state[k].shape)} vs "
            f"{tuple(own[k].shape)} (is the model config the one this checkpoint was trained with?)"
        )
    report = LoadReport(source)
    report.missing = [k for k in own if k not in state]
    report.unexpected = [k for k in state if k not in own]
    fatal = [k for k in report.missing if not k.startswith(NEW_IN_VIDEO + OPTIONAL)]
    if fatal:
        raise CheckpointError(f"{source}: {len(fatal)} model tensors are missing from the checkpoint, e.g. {fatal[:3]}")
    usable = {k: v for k, v in state.items() if k in own}
    model.load_state_dict(usable, strict=False)
    report.loaded = len(usable)
    return report
