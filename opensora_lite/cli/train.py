"""`osl-train`: run one stage of the curriculum.

    osl-train run.stage=t2v                          # a stage of the default (tiny) curriculum
    osl-train experiment=opensora2 run.stage=i2v_256px
The stage starts from its `init` (by default the previous stage's final weights in the same run
directory) or resumes from its own newest checkpoint. Used by the Slurm chain, one job per stage.
"""

from __future__ import annotations

from omegaconf import DictConfig

from opensora_lite.cli.common import hydra_entry
from opensora_lite.cli.curriculum import run
from opensora_lite.errors import ConfigError


@hydra_entry("config", validate_on_print=True)
def main(cfg: DictConfig) -> None:
    stages = list(cfg.curriculum.stages)
    stage = cfg.run.stage or (stages[0] if len(stages) == 1 else None)
    if stage is None:
        raise ConfigError("run.stage", f"osl-train runs one stage: choose one of {stages} (run.stage=<name>)")
    run(cfg, only=stage)


if __name__ == "__main__":
    main()
