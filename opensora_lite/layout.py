"""Where a run's files lie: the run directory, a stage's folders, the names of checkpoint files. A leaf:
every package that reads or writes these paths takes them from here (docs/run-directory.md).

    runs/<name>/                 config.yaml, metrics.jsonl, logs/, empty_prompt.safetensors, wandb/
      <stage>/checkpoints/step_00000100/   model.safetensors | model_dcp/, optimizer state, trainer_state.*
      <stage>/final/             model.safetensors [, ema.safetensors, adapters.safetensors], summary.json
      <stage>/samples/           the end-of-stage samples
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
EMPTY_PROMPT_FILE = "empty_prompt.safetensors"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
ADAPTER_FILE = "adapters.safetensors"  # a LoRA stage's trainable tensors (docs/lora.md)
MODEL_DCP = "model_dcp"  # sharded weights: a torch.distributed.checkpoint folder
OPTIM_DCP = "optim_dcp"  # single, ddp, fsdp2: by parameter name, any world size
OPTIM_DEEPSPEED = "optim_deepspeed"  # DeepSpeed's own checkpoint: same world size
OPTIM_COLOSSALAI = "optim_colossalai"  # the Booster's sharded optimizer checkpoint: any world size
STATE_JSON, STATE_TENSORS = "trainer_state.json", "trainer_state.safetensors"
SUMMARY_FILE = "summary.json"
SKIPPED_FILE = "skipped.tsv"  # the samples a stage skipped, one per line
_STEP = re.compile(r"^step_(\d{8})$")


def config_dir() -> Path:
    """The configs/ folder of this checkout (the package is installed editable from it)."""
    path = Path(__file__).resolve().parents[1] / "configs"
    if not path.is_dir():
        raise FileNotFoundError(f"configs/ not found next to the package ({path}); install with `pip install -e .`")
    return path


class StageDir:
    """The folders of one stage (runs/<run>/<stage>/) and the checkpoints in them."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.final = self.root / "final"
        self.samples = self.root / "samples"

    @property
    def done(self) -> bool:
        """The stage finished: its final weights exist."""
        return (self.final / MODEL_FILE).is_file()

    def list_checkpoints(self) -> list[Path]:
        """The complete checkpoints, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = [p for p in self.checkpoints.iterdir() if p.is_dir() and _STEP.match(p.name)]
        return sorted(found, key=lambda p: int(_STEP.match(p.name).group(1)))

    def latest_checkpoint(self) -> Path | None:
        found = self.list_checkpoints()
        return found[-1] if found else None

    def checkpoint_tmp(self, step: int) -> Path:
        """Where the checkpoint of `step` is written (by every rank) before it is published."""
        return self.checkpoints / f".tmp-step_{step:08d}"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:08d}"

    @staticmethod
    def step_of(checkpoint: Path) -> int:
        return int(_STEP.match(checkpoint.name).group(1))

    @staticmethod
    def checkpoint_weights(path: Path) -> Path:
        """The model weights of a checkpoint folder: its safetensors file or its DCP folder."""
        return path / MODEL_FILE if (path / MODEL_FILE).is_file() else path / MODEL_DCP


def run_dir_for(cfg) -> Path:
    """<root>/<name>; inside a --multirun sweep each job gets <root>/<name>/<job number>_<swept values>."""
    base = Path(cfg.run.root) / cfg.run.name
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except ValueError:  # not running under Hydra (tests call the functions directly)
        return base
    if hc.mode != RunMode.MULTIRUN:
        return base
    swept = _swept_keys()
    values = [o for o in hc.overrides.task if o.split("=", 1)[0].lstrip("+~") in swept]
    tag = ",".join(values).replace("/", "_")[:120] or "job"
    return base / f"{hc.job.num}_{tag}"


SWEPT_KEYS_ENV = "OSL_SWEPT_KEYS"  # set by the sweeping command, inherited by its jobs (local or Slurm)


def _swept_keys() -> set[str]:
    """Keys given a sweep on the sweeping command line (a job on Slurm has another command line)."""
    if SWEPT_KEYS_ENV in os.environ:
        return {k for k in os.environ[SWEPT_KEYS_ENV].split(",") if k}
    return swept_keys_in_argv()


def swept_keys_in_argv() -> set[str]:
    """Keys given a sweep (a,b / range / choice) on this command line."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = get_args_parser().parse_args(sys.argv[1:])
    parsed = OverridesParser.create().parse_overrides(list(args.overrides))
    return {o.key_or_group for o in parsed if o.is_sweep_override()}
