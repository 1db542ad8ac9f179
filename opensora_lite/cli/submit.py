"""`osl-submit`: submit a curriculum to Slurm as a chain, one job per stage, each after the previous one
succeeded (`--dependency=afterok`). A requeued job keeps its id, so the chain waits for it; a stage that
fails makes Slurm cancel the stages after it (`--kill-on-invalid-dep=yes`, reason
DependencyNeverSatisfied) instead of leaving them queued forever.

    osl-submit experiment=opensora2 run.name=os2_a                       # slurm/multinode.sbatch, 2 nodes
    osl-submit --nodes 4 --stage-nodes hires_768px=8 experiment=opensora2 run.name=os2_a
    osl-submit --sbatch=--partition=h200 --sbatch=--time=48:00:00 experiment=opensora2 run.name=os2_a

Everything that is not an osl-submit option is a Hydra override for every stage; the config is composed
and validated here first, so a typo fails before anything is queued. Prints one line per job.

    osl-submit --curate 16 --sbatch=--cpus-per-task=64 source=/data/raw out=/data/curated   # osl-curate

`--curate TASKS` queues osl-curate as a job array of TASKS tasks (slurm/curate_array.sbatch; the last task to
finish merges); the overrides are osl-curate's, checked here first (a stage without its weights is refused).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from opensora_lite.config.load import config_dir, register, to_config
from opensora_lite.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="osl-submit", description=__doc__.split("\n\n")[0])
    p.add_argument("--template", default=None, help="the sbatch script per stage (default slurm/multinode.sbatch; "
                   "with --curate slurm/curate_array.sbatch)")  # fmt: skip
    p.add_argument("--nodes", type=int, default=None, help="nodes per stage (default: the template's)")
    p.add_argument("--stage-nodes", action="append", default=[], metavar="STAGE=N", help="nodes for one stage")
    p.add_argument("--sbatch", action="append", default=[], metavar="OPTION", help="an extra sbatch option, repeatable")
    p.add_argument("--after", default=None, help="a job id the first stage waits for (afterok)")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch commands only")
    p.add_argument("--curate", type=int, default=None, metavar="TASKS", help="osl-curate as a job array of TASKS")
    return p.parse_known_args(argv)


def stages_of(overrides: list[str]) -> list[str]:
    from hydra import compose, initialize_config_dir

    register()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = to_config(compose("config", overrides=overrides))
    return [cfg.run.stage] if cfg.run.stage else list(cfg.curriculum.stages)


def submit_curation(args: argparse.Namespace, overrides: list[str]) -> None:
    """osl-curate as one job array, its config composed and its stages built here first."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from opensora_lite.curate.stages import build_stages

    if args.curate < 1:
        sys.exit("error: --curate: give the number of array tasks (1 or more)")
    register()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            build_stages(OmegaConf.to_object(compose("curate", overrides=overrides)))
    except UserError as exc:
        sys.exit(f"error: {exc}")
    except Exception as exc:  # a missing or mistyped key: Hydra's or OmegaConf's one line
        sys.exit(f"error: {str(exc).splitlines()[0]}")
    template = args.template or str(REPO / "slurm" / "curate_array.sbatch")
    cmd = ["sbatch", "--parsable", f"--array=0-{args.curate - 1}", *args.sbatch]
    if args.after:
        cmd += [f"--dependency=afterok:{args.after}", "--kill-on-invalid-dep=yes"]
    cmd += [template, *overrides]
    if args.dry_run:
        print(" ".join(cmd))
        return
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"error: sbatch for osl-curate failed: {out.stderr.strip()}")
    print(f"curate: job {out.stdout.strip().split(';')[0]} ({args.curate} tasks)", flush=True)


def main(argv: list[str] | None = None) -> None:
    args, overrides = parse(sys.argv[1:] if argv is None else argv)
    unknown = [o for o in overrides if o.startswith("-")]
    if unknown:
        sys.exit(f"error: unknown option {unknown[0]} (sbatch options go in --sbatch=...)")
    if args.curate is not None:
        return submit_curation(args, overrides)
    try:
        names = stages_of(overrides)
    except UserError as exc:
        sys.exit(f"error: {exc}")
    per_stage = dict(item.split("=", 1) for item in args.stage_nodes)
    missing = sorted(set(per_stage) - set(names))
    if missing:
        sys.exit(f"error: --stage-nodes names {missing[0]}, not a stage of this curriculum ({', '.join(names)})")
    previous = args.after
    for name in names:
        cmd = ["sbatch", "--parsable", f"--job-name=osl-{name}", *args.sbatch]
        nodes = per_stage.get(name, args.nodes)
        if nodes:
            cmd.append(f"--nodes={nodes}")
        if previous:
            cmd += [f"--dependency=afterok:{previous}", "--kill-on-invalid-dep=yes"]
        cmd += [args.template or str(REPO / "slurm" / "multinode.sbatch"), *overrides, f"run.stage={name}"]
        if args.dry_run:
            print(" ".join(cmd))
            previous = f"<{name}>"
            continue
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"error: sbatch for stage {name} failed: {out.stderr.strip()}")
        previous = out.stdout.strip().split(";")[0]
        print(f"{name}: job {previous}", flush=True)


if __name__ == "__main__":
    main()
