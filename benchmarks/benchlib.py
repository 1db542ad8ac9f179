"""Shared by the benchmark scripts: machine description, commit, appending a table to docs/benchmarks.md.

Standard library only (bench_quickstart.py runs before anything is installed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import time
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


def run_logged(cmd: list[str], log: Path, what: str) -> float:
    """Run `cmd` from the repository with its output in `log`; its wall seconds. Exits naming `what`
    and the log if it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"{what} failed (exit {rc}); see {log}")
    return time.perf_counter() - began


def rss_mib() -> float:
    """This process's resident memory now, MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def mmdit_config(hidden: int, heads: int, double: int, single: int, text_dim: int, vec_dim: int):
    """A benchmark MMDiT (16 latent channels, SDPA) with Flux's RoPE proportions (1/8 of a head on time).
    Imports opensora_lite here: the rest of this module is standard library only."""
    from opensora_lite.models.flux.model import MMDiTConfig

    head_dim = hidden // heads
    rope_t = head_dim // 8
    return MMDiTConfig(
        latent_channels=16,
        hidden_size=hidden,
        num_heads=heads,
        depth=double,
        depth_single_blocks=single,
        axes_dim=[rope_t, (head_dim - rope_t) // 2, (head_dim - rope_t) // 2],
        context_in_dim=text_dim,
        vec_in_dim=vec_dim,
        attention_backend="sdpa",
    )


def parse_gpu_args(p: argparse.ArgumentParser):
    """The GPU scripts' shared tail: adds --budget-s, --smoke and --no-append, parses, and picks the
    device (CUDA unless --smoke; without CUDA and without --smoke, one line and exit). Returns (args,
    device). Imports torch here: the rest of this module is standard library only."""
    import torch

    p.add_argument("--budget-s", type=float, default=float("inf"), help="start no new row after this many seconds")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: checks that the script runs")
    p.add_argument("--no-append", action="store_true")
    a = p.parse_args()
    if not torch.cuda.is_available() and not a.smoke:
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --smoke to check the script on CPU")
    return a, torch.device("cpu" if a.smoke else "cuda")


def compose(overrides: list[str] | None = None, config_name: str = "config"):
    """The composed (untyped) config of configs/, as the CLIs see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from opensora_lite.config.load import register
    from opensora_lite.layout import config_dir

    register()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name, overrides=overrides or [])
