#!/usr/bin/env python3
"""experiment=tiny_av end to end, timed: the audio autoencoder, image, text-to-video and audio stages.

    python3 -m benchmarks.bench_tiny_av                          # the whole run (after osl-data shapes=av)
    python3 -m benchmarks.bench_tiny_av --no-append curriculum.stages.t2av.steps=200   # + overrides

Runs `osl-curriculum experiment=tiny_av` under --root (a finished run is reused: its stages skip, and the
times are then those of the skip) and reports its wall time beside the CPU time (user + sys) of the run's
processes: on a shared machine the wall time follows the load, the CPU time much less. Per stage: the
train and evaluation seconds and the figures (the audio autoencoder: log-mel L1 and PSNR, the raw latents'
std; the diffusion stages: the Shapes evaluator's colour and direction), and for the audio stage its
losses (loss_video, loss_audio: the means of its first and last logged windows). Prints the table and
appends it to docs/benchmarks.md (`--no-append`: print only).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from benchmarks.benchlib import REPO, heading, publish, run_logged, table

BIN = REPO / ".venv" / "bin"
FIGURES = ("mel_l1", "mel_psnr", "latent_std", "colour_acc", "direction_acc")


def children_cpu() -> float:
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def audio_losses(run_dir: Path, stage: str = "t2av", window: int = 5) -> str:
    """loss_video and loss_audio of the audio stage: the mean of its first and of its last `window` logged
    windows."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if r.get("stage") == stage and "loss_audio" in r]
    if not logged:
        return ""

    def mean(rs: list[dict], key: str) -> float:
        return sum(r[key] for r in rs) / len(rs)

    first, last = logged[:window], logged[-window:]
    return ", ".join(f"{k} {mean(first, k):.3f} -> {mean(last, k):.3f}" for k in ("loss_video", "loss_audio"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=str(REPO / "runs" / "bench_tiny_av"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-append", action="store_true")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for the run")
    a = p.parse_args()
    root = Path(a.root)
    cmd = [str(BIN / "osl-curriculum"), "experiment=tiny_av", f"run.root={root}", f"run.threads={a.threads}"]
    cpu, began = children_cpu(), time.time()
    wall = run_logged([*cmd, *a.overrides, "run.name=tiny_av"], root / "tiny_av.log", "the run")
    cpu = children_cpu() - cpu
    run_dir = root / "tiny_av"
    rows = []
    for summary in sorted(run_dir.glob("*/final/summary.json"), key=lambda f: f.stat().st_mtime):
        s = json.loads(summary.read_text())
        figures = ", ".join(f"{k} {s['metrics'][k]:.3f}" for k in FIGURES if k in s.get("metrics", {}))
        if s["name"] == "t2av":
            figures = ", ".join(f for f in (figures, audio_losses(run_dir)) if f)
        rows.append([s["name"], s["steps"], f"{s['seconds']:.0f}", f"{s.get('eval_seconds', 0):.0f}", figures])
    lines = heading(
        "experiment=tiny_av end to end (CPU)",
        " ".join(["python3 -m benchmarks.bench_tiny_av", f"--threads {a.threads}", *a.overrides]),
        note=f" (curriculum wall {wall:.0f} s, CPU {cpu:.0f} s (user + sys), started "
        f"{time.strftime('%H:%M UTC', time.gmtime(began))})",
    )
    lines += table(["stage", "steps", "train s", "eval s", "figures"], rows)
    publish(lines, not a.no_append)


if __name__ == "__main__":
    main()
