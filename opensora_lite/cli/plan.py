"""`osl-plan`: cost, time and memory of every stage and bucket of a curriculum, before it runs.

    osl-plan experiment=opensora2                                # Open-Sora 2.0's table, on their cluster
    osl-plan experiment=opensora2 plan.gpu=H100 --format markdown
    osl-plan experiment=opensora2 --compare 'plan.mfu=0.45' 'plan=opensora2_dcae'
    osl-plan experiment=tiny_cpu plan.mix=shards plan.metrics=runs/tiny_cpu   # measured MFU, real mix
Flags (before Hydra sees the command line): --format table|markdown|json, --chart PATH, and
--compare SET [SET ...], each SET one quoted string of overrides planned beside the base command's.
"""

from __future__ import annotations

import sys

from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from opensora_lite.cli.common import hydra_entry
from opensora_lite.config.load import to_config
from opensora_lite.config.schema import PlanJobConfig
from opensora_lite.errors import ConfigError

FLAGS = {"--format": "plan.format", "--chart": "plan.chart"}


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def flags_to_overrides(argv: list[str]) -> list[str]:
    """--format/--chart/--compare turned into plan.* overrides (Hydra parses only key=value)."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        name, _, value = arg.partition("=")
        if name in FLAGS:
            if not value:
                if i + 1 >= len(argv):
                    raise SystemExit(f"error: {name} needs a value")
                value, i = argv[i + 1], i + 1
            out.append(f"{FLAGS[name]}={value}")
        elif arg == "--compare":
            sets = []
            while i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                sets.append(argv[i + 1])
                i += 1
            if not sets:
                raise SystemExit("error: --compare needs one or more quoted override sets")
            out.append("plan.compare=[" + ",".join(_quote(s) for s in sets) + "]")
        else:
            out.append(arg)
        i += 1
    return out


def plan_config(cfg: DictConfig) -> PlanJobConfig:
    typed = to_config(cfg)
    if not isinstance(typed, PlanJobConfig):
        raise ConfigError("<root>", "not a plan config (is osl_plan_schema first in configs/plan.yaml?)")
    return typed


@hydra_entry("plan")
def _task(cfg: DictConfig) -> None:
    from opensora_lite.plan import build_plan
    from opensora_lite.plan.chart import write_chart
    from opensora_lite.plan.report import render

    base = plan_config(cfg)
    plans = [build_plan(base)]
    task = [o for o in HydraConfig.get().overrides.task if not o.startswith("plan.compare=")]
    for extra in base.plan.compare:
        mine = extra.split()
        keys = {o.split("=", 1)[0].lstrip("+~") for o in mine}
        kept = [o for o in task if o.split("=", 1)[0].lstrip("+~") not in keys]  # the set's own value wins
        other = plan_config(compose("plan", overrides=kept + mine))
        other.plan.label = other.plan.label if other.plan.label != base.plan.label else extra
        plans.append(build_plan(other))
    print(render(plans, base.plan.format))
    if base.plan.chart:
        print(f"chart: {write_chart(plans, base.plan.chart)}", file=sys.stderr if base.plan.format == "json" else None)


def main() -> None:
    sys.argv = [sys.argv[0], *flags_to_overrides(sys.argv[1:])]
    _task()


if __name__ == "__main__":
    main()
