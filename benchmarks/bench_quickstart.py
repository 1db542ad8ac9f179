#!/usr/bin/env python3
"""Time the README's quickstart as a new user meets it, and record the figures.

Clones this repository into a fresh folder, runs `./scripts/quickstart.sh` there exactly as the README
says, and reports the wall time of each phase (install, dataset, each stage's training and
evaluation) with the evaluator's figures. Prints a table and appends it to docs/benchmarks.md with
the date, commit and machine.

    python3 -m benchmarks.bench_quickstart              # about 13 minutes on 2 CPU cores
    python3 -m benchmarks.bench_quickstart --no-append  # print only

Uses only the standard library: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.benchlib import BENCHMARKS, REPO, heading

# The quickstart's own messages at the end of each set-up phase.
# the evaluator's figures, in the table's column order (speed chance 0.5, shape 0.33)
FIGURES = ("colour_acc", "direction_acc", "speed_acc", "shape_acc", "i2v_colour_keep")
PHASES = [("install", re.compile(r"^install: done")), ("dataset", re.compile(r"^wrote \d+ clips"))]


def run_quickstart(folder: Path) -> tuple[float, dict[str, float], str]:
    """Run the quickstart in folder; return total seconds, when each set-up phase ended, the output."""
    marks: dict[str, float] = {}
    out = []
    start = time.perf_counter()
    proc = subprocess.Popen(
        ["./scripts/quickstart.sh"], cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    for line in proc.stdout:
        out.append(line)
        for name, pattern in PHASES:
            if name not in marks and pattern.search(line):
                marks[name] = time.perf_counter() - start
    proc.wait()
    total = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"quickstart failed (exit {proc.returncode}):\n{''.join(out[-30:])}")
    return total, marks, "".join(out)


def report(folder: Path, total: float, marks: dict[str, float]) -> str:
    run_dir = folder / "runs" / "tiny_cpu"
    summaries = [json.loads(p.read_text()) for p in sorted(run_dir.glob("*/final/summary.json"))]
    order = {"image": 0, "t2v": 1, "i2v": 2, "hires": 3}
    summaries.sort(key=lambda s: order.get(s["name"], 9))
    lines = heading(
        "Quickstart", "python3 -m benchmarks.bench_quickstart", folder, " (a fresh clone, `./scripts/quickstart.sh`)"
    )
    lines += [
        "| phase | seconds | steps | " + " | ".join(FIGURES) + " |",
        "|---|---|---|" + "---|" * len(FIGURES),
        f"| install | {marks['install']:.0f} |" + " |" * (len(FIGURES) + 1),
        f"| dataset | {marks['dataset'] - marks['install']:.0f} |" + " |" * (len(FIGURES) + 1),
    ]
    for s in summaries:
        m = s.get("metrics", {})
        figs = " | ".join(f"{m[k]:.3f}" if k in m else "-" for k in FIGURES)
        lines.append(f"| {s['name']} train | {s['seconds']:.0f} | {s['steps']} |" + " |" * len(FIGURES))
        lines.append(f"| {s['name']} eval | {s.get('eval_seconds', 0):.0f} | | {figs} |")
    lines += [f"| **total** | **{total:.0f}** ({total / 60:.1f} min) |" + " |" * (len(FIGURES) + 1), ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--no-append", action="store_true", help="print the table, do not touch docs/benchmarks.md")
    p.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    a = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="osl-quickstart-")) / "repo"
    subprocess.run(["git", "clone", "-q", str(REPO), str(folder)], check=True)
    try:
        total, marks, _ = run_quickstart(folder)
        table = report(folder, total, marks)
    finally:
        if not a.keep:
            shutil.rmtree(folder.parent, ignore_errors=True)
    print(table)
    if not a.no_append:
        with open(BENCHMARKS, "a") as f:
            f.write("\n" + table)
        print(f"appended to {BENCHMARKS}")
    if a.keep:
        print(f"clone kept at {folder}")


if __name__ == "__main__":
    main()
