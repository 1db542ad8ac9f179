"""Shared by the benchmark scripts: machine description, commit, appending a table to docs/benchmarks.md.

Standard library only (bench_quickstart.py runs before anything is installed).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "docs" / "benchmarks.md"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, Python {platform.python_version()}"


def commit(folder: Path = REPO) -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=folder, capture_output=True, text=True)
    sha = out.stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder, capture_output=True)
    return sha + ("+dirty" if dirty.stdout.strip() else "")


def heading(title: str, command: str, folder: Path = REPO, note: str = "") -> list[str]:
    """The first lines of an entry: title with date and commit, then machine and command (and a note)."""
    return [
        f"### {title}, {dt.date.today().isoformat()}, commit {commit(folder)}",
        "",
        f"Machine: {machine()}. Command: `{command}`{note}.",
        "",
    ]


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def publish(lines: list[str], append: bool) -> None:
    text = "\n".join(lines) + "\n"
    print(text)
    if append:
        with open(BENCHMARKS, "a") as f:
            f.write("\n" + text)
        print(f"appended to {BENCHMARKS}")
