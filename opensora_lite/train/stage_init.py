"""A stage's initial weights across a change of latent space (Open-Sora 2.0's high-compression adaptation).

When a stage's autoencoder or patch differs from its parent's (config/stages.py), the layers whose
shapes follow the latent space (the model spec's latent_layers: the MMDiT's img_in, final_layer.linear
and cond_in, latent channels x patch) cannot take the parent's tensors: they keep the model's fresh
initialisation. Everything else (the blocks, the text and time embedders, the final modulation)
carries over. Any other shape mismatch is
still an error: it means the parent is a different model, not the same one in another latent space.

The report (carried N tensors, re-initialised [layers]) is logged in one line, recorded as the `init`
event and kept in the stage's summary.json under "init"; `init.json` in the stage folder keeps it
across a resume.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from opensora_lite.config.schema import Config
from opensora_lite.config.stages import parent_config, switches_autoencoder
from opensora_lite.errors import CheckpointError
from opensora_lite.models.loading import LoadReport, load_into

INIT_FILE = "init.json"


@dataclass
class InitReport:
    """What a stage's initial weights were: the source, and what of it the model took."""

    source: str | None
    carried: int = 0  # tensors copied from the source
    reinitialised: list[str] = field(default_factory=list)  # layers that kept their fresh init (shape changed)
    missing: list[str] = field(default_factory=list)  # model tensors the source lacks (fresh init)
    unexpected: list[str] = field(default_factory=list)  # source tensors the model lacks (dropped)
    autoencoder: dict = field(default_factory=dict)  # {"from": kind, "to": kind} where the stage switched

    def line(self) -> str:
        """The one log line a user reads at stage start (the load report, plus the switch where there is one)."""
        if self.source is None:
            return "initialised from scratch"

        def short(keys: list[str]) -> str:
            prefixes = sorted({k.split(".")[0] for k in keys})
            return f"{len(keys)} ({', '.join(prefixes)})" if keys else "0"

        head = f"loaded {self.carried} tensors from {self.source}; missing {short(self.missing)}; "
        head += f"unexpected {short(self.unexpected)}"
        if self.autoencoder:
            a = self.autoencoder
            head += (
                f"; autoencoder {a['from']} -> {a['to']} (patch {a['from_patch']} -> {a['to_patch']}): "
                f"carried {self.carried} tensors, re-initialised {self.reinitialised}"
            )
        return head

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / INIT_FILE).write_text(json.dumps(asdict(self), indent=1))

    @staticmethod
    def read(folder: Path) -> dict:
        path = folder / INIT_FILE
        return json.loads(path.read_text()) if path.is_file() else {}


def layer_name(key: str) -> str:
    """The module a tensor belongs to: img_in.weight -> img_in."""
    return key.rsplit(".", 1)[0]


def load_across_latent_spaces(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, spec
) -> tuple[LoadReport, list]:
    """Load `state` into `model`, keeping the model's own values for the latent-space layers whose
    shapes differ; returns the load report and those layers' tensor names."""
    latent = spec.latent_layers()
    own = model.state_dict()
    changed = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    foreign = [k for k in changed if not k.startswith(latent)]
    if foreign:
        k = foreign[0]
        raise CheckpointError(
            f"{source}: {len(foreign)} tensors outside the latent-space layers ({', '.join(latent)}) do not "
            f"fit the model, e.g. {k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}: a change of autoencoder "
            "re-initialises only those layers"
        )
    usable = {**state, **{k: own[k] for k in changed}}  # the fresh values, loaded back in place
    report = load_into(model, usable, source, spec.optional_keys())
    return report, changed


def load_stage_weights(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, switching: bool, spec
) -> tuple[LoadReport, list[str]]:
    """A stage's initial weights: across latent spaces where the stage switches autoencoder, else exactly
    (`spec`: the model's family, models/spec.py)."""
    if switching:
        return load_across_latent_spaces(model, state, source, spec)
    return load_into(model, state, source, spec.optional_keys()), []


def stage_init_report(cfg: Config, name: str, loaded: LoadReport, changed: list[str]) -> InitReport:
    """The InitReport of stage `name` after its weights were loaded (`changed`: tensors kept fresh)."""
    out = InitReport(
        source=loaded.source,
        carried=loaded.loaded - len(changed),
        reinitialised=sorted({layer_name(k) for k in changed}),
        missing=list(loaded.missing),
        unexpected=list(loaded.unexpected),
    )
    if switches_autoencoder(cfg, name):
        from opensora_lite.config.stages import stage_config

        parent, own = parent_config(cfg, name), stage_config(cfg, name)
        out.autoencoder = {
            "from": parent.autoencoder.kind,
            "to": own.autoencoder.kind,
            "from_patch": list(parent.model.patch_size),
            "to_patch": list(own.model.patch_size),
        }
    return out
