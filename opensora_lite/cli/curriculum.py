"""`osl-curriculum`: run every stage of the curriculum in order (skipping completed ones).

osl-curriculum                                  # experiment=tiny_cpu, the quickstart
osl-curriculum experiment=opensora2 --cfg job   # print the resolved config only
osl-curriculum run.name=try2 curriculum.stages.t2v.steps=300
"""

from __future__ import annotations

from omegaconf import DictConfig

from opensora_lite.cli.common import hydra_entry, load, run_dir_for
from opensora_lite.errors import UserError
from opensora_lite.train.curriculum import format_results, run_stages
from opensora_lite.train.preflight import check_data, check_inits
from opensora_lite.train.runtime import build_runtime


def run(cfg: DictConfig, only: str | None = None) -> list:
    """Run the curriculum's stages in order, or one stage (`only`, else `run.stage` when set)."""
    typed, resolved = load(cfg)
    only = only or typed.run.stage
    names = [only] if only else list(typed.curriculum.stages)
    run_dir = run_dir_for(typed)
    check_data(typed)
    check_inits(typed, run_dir, names)
    rt = build_runtime(typed, run_dir, resolved)
    clean = False
    try:
        results = run_stages(rt, names)
        if rt.engine.is_main:
            print("\n" + format_results(results), flush=True)
            print(f"\nrun directory: {run_dir}", flush=True)
        clean = True
        return results
    except UserError as exc:  # raised once the ranks started: it may be this rank's own (cli/common.py)
        if rt.engine.world_size > 1:
            exc.rank = rt.engine.rank
        raise
    finally:
        rt.close(clean)


@hydra_entry("config", validate_on_print=True)
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
