"""Loading weights into a built model, for every family: shape checks with one clear error, and a report
of what was missing or left over (the `init` event, the log). Which keys may be missing on purpose is
the family's (ModelSpec.optional_keys: `cond_in`, added and zero-initialised)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from opensora_lite.errors import CheckpointError

FIT_HINT = "(is the model config the one this checkpoint was trained with?)"


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


def check_fit(own: dict[str, tuple], found: dict[str, tuple], source: str, optional: tuple[str, ...]) -> LoadReport:
    """Compare a checkpoint's tensor shapes (`found`) with the model's (`own`): one error for tensors of
    another shape or model tensors missing (except `optional` prefixes); else the report."""
    mismatched = [k for k, shape in found.items() if k in own and tuple(shape) != tuple(own[k])]
    if mismatched:
        k = mismatched[0]
        raise CheckpointError(
            f"{source}: {len(mismatched)} tensors do not fit the model, e.g. {k} {tuple(found[k])} vs "
            f"{tuple(own[k])} {FIT_HINT}"
        )
    report = LoadReport(source)
    report.missing = [k for k in own if k not in found]
    report.unexpected = [k for k in found if k not in own]
    fatal = [k for k in report.missing if not k.startswith(optional)]
    if fatal:
        raise CheckpointError(f"{source}: {len(fatal)} model tensors are missing from the checkpoint, e.g. {fatal[:3]}")
    return report


def load_into(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, optional: tuple[str, ...] = ()
) -> LoadReport:
    """`state` into `model` (shapes checked; keys with an `optional` prefix may be missing)."""
    own = model.state_dict()
    report = check_fit({k: v.shape for k, v in own.items()}, {k: v.shape for k, v in state.items()}, source, optional)
    usable = {k: v for k, v in state.items() if k in own}
    model.load_state_dict(usable, strict=False)
    report.loaded = len(usable)
    return report
