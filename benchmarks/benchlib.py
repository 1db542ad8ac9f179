"""Shared by the benchmark scripts: machine description, commit, the entries of docs/benchmarks.md, and
what the GPU suite needs to bring its results back from a lent machine (docs/gpu-suite.md).

A GPU script's entry is a `Report`: published row by row as each row is measured, to stdout and, where
`$OUT` is set (the device tool's folder of files that come back), to `$OUT/tables.md` (markdown) and
`$OUT/rows.jsonl` (one JSON record per line), so that a part stopped at its time cap keeps every row it
finished. `benchmarks/returned.py` turns the returned rows.jsonl into docs/benchmarks.md entries.

Standard library only (bench_quickstart.py runs before anything is installed; the suite's shell calls
`python -m benchmarks.benchlib stopped ...`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "docs" / "benchmarks.md"
CARRY = REPO / ".whl"  # the carry set benchmarks/carry_set.py makes (git-ignored), with COMMIT beside the wheels
TABLES, ROWS = "tables.md", "rows.jsonl"  # in $OUT


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
    where = f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, Python {platform.python_version()}"
    torch = sys.modules.get("torch")  # named where a script already imported it (this module imports no torch)
    if torch is not None and torch.cuda.is_available():
        where += f", {torch.cuda.get_device_name()} (torch {torch.__version__})"
    return where


def commit(folder: Path = REPO) -> str:
    """The commit measured: $OSL_COMMIT; else git, where the folder is a checkout; else the COMMIT file the
    carry script wrote beside the wheels (a lent machine gets the working tree without .git, and may have
    no git); else "unknown". Git comes before the file: here the file may be older than the checkout.
    Never raises: a figure is worth keeping with an unknown commit."""
    if os.environ.get("OSL_COMMIT"):
        return os.environ["OSL_COMMIT"]
    if shutil.which("git") is not None and (folder / ".git").exists():
        try:
            out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=folder, capture_output=True, text=True)
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder, capture_output=True
            )
        except OSError:
            out = None
        if out is not None and out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    stamp = folder / CARRY.name / "COMMIT"
    if stamp.is_file() and stamp.read_text().strip():
        return stamp.read_text().strip()
    return "unknown"


def heading_lines(title: str, date: str, sha: str, where: str, command: str, note: str = "") -> list[str]:
    return [f"### {title}, {date}, commit {sha}", "", f"Machine: {where}. Command: `{command}`{note}.", ""]


def heading(title: str, command: str, folder: Path = REPO, note: str = "") -> list[str]:
    """The first lines of an entry: title with date and commit, then machine and command (and a note)."""
    return heading_lines(title, dt.date.today().isoformat(), commit(folder), machine(), command, note)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def publish(lines: list[str], append: bool) -> None:
    """Print an entry made all at once, and append it to docs/benchmarks.md (the CPU benchmarks)."""
    text = "\n".join(lines) + "\n"
    print(text)
    if append:
        with open(BENCHMARKS, "a") as f:
            f.write("\n" + text)
        print(f"appended to {BENCHMARKS}")


def out_dir() -> Path | None:
    """$OUT where it is set: the folder whose files come back from a lent machine."""
    out = os.environ.get("OUT")
    return Path(out) if out else None


def render(records: list[dict]) -> list[str]:
    """The markdown lines of a run of records (Report's JSON lines): the format of docs/benchmarks.md."""
    lines, last = [], None
    for r in records:
        kind = r["kind"]
        if kind == "heading":
            lines += heading_lines(r["title"], r["date"], r["commit"], r["machine"], r["command"], r.get("note", ""))
        elif kind == "text":
            lines += ([""] if last in ("table", "row") else []) + [r["text"], ""]
        elif kind == "table":
            lines += ([""] if last in ("table", "row") else []) + table(r["header"], [])
        elif kind == "row":
            lines += ["| " + " | ".join(str(c) for c in r["cells"]) + " |"]
        elif kind == "stopped":
            lines += ([""] if last in ("table", "row") else []) + [stopped_line(r), ""]
        elif kind == "end" and last in ("table", "row"):
            lines += [""]  # (entries follow each other in tables.md)
        last = kind
    return lines


def stopped_line(r: dict) -> str:
    return (
        f"(Stopped by the suite at its {r['cap_s']:g}-s cap: the rows above are those that finished; "
        "the rest of this part did not run.)"
    )


class Report:
    """One entry of docs/benchmarks.md, published as it is measured: each heading, paragraph, table header
    and row goes to stdout at once and, where $OUT is set, is appended to $OUT/tables.md and (as a JSON
    record naming the suite part) to $OUT/rows.jsonl. close() appends the whole entry to docs/benchmarks.md
    when `append` (a script run by hand on a GPU machine; the suite passes --no-append and brings the files
    back instead)."""

    def __init__(self, title: str, command: str, note: str = "", append: bool = False, part: str | None = None):
        self.part = part or os.environ.get("OSL_SUITE_PART") or Path(sys.argv[0]).stem
        self.append, self.records, self.rows = append, [], 0
        self.out = out_dir()
        date, sha, where = dt.date.today().isoformat(), commit(), machine()
        self._emit(dict(kind="heading", title=title, date=date, commit=sha, machine=where, command=command, note=note))

    def text(self, text: str) -> None:
        self._emit(dict(kind="text", text=text))

    def table(self, header: list[str]) -> None:
        self._emit(dict(kind="table", header=list(header)))

    def row(self, cells: list, **data) -> None:
        """A measured row (cells as printed; `data`: the same figures as numbers, for the JSON record)."""
        self._emit(dict(kind="row", cells=[str(c) for c in cells], data=data))
        self.rows += 1
        hold = os.environ.get("OSL_BENCH_STALL_AFTER_ROWS")  # tests: a part that cannot finish its next row
        if hold and self.rows >= int(hold):
            time.sleep(3600)

    def close(self) -> None:
        self._emit(dict(kind="end"))
        if self.append:
            with open(BENCHMARKS, "a") as f:
                f.write("\n" + "\n".join(render(self.records)) + "\n")
            print(f"appended to {BENCHMARKS}")

    def _emit(self, record: dict) -> None:
        lines = render(self.records[-1:] + [record])[len(render(self.records[-1:])) :]
        self.records.append(record)
        if lines:
            print("\n".join(lines), flush=True)
        if self.out is not None:
            write_out(self.out, dict(record, part=self.part), lines)


def write_out(out: Path, record: dict, lines: list[str]) -> None:
    """Append one record to $OUT/rows.jsonl and its lines to $OUT/tables.md (each write flushed)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ROWS, "a") as f:
        f.write(json.dumps(record) + "\n")
    if lines:
        with open(out / TABLES, "a") as f:
            f.write("\n".join(lines) + "\n")


class Budget:
    """The time a part has left before the suite's cap ends it: the suite exports OSL_PART_DEADLINE (epoch
    seconds, a few seconds before its `timeout` fires); `seconds` (a script's --budget-s) counts from now.
    A row is started only when its estimate, measured on the rows before it, fits what is left."""

    def __init__(self, seconds: float = float("inf")):
        deadline = float(os.environ.get("OSL_PART_DEADLINE", "inf"))
        self.deadline = min(deadline, time.time() + seconds)

    def left(self) -> float:
        return self.deadline - time.time()

    def fits(self, estimate: float | None) -> bool:
        """Whether a row of `estimate` seconds (None: not known yet, the first of its kind) can finish."""
        return self.left() > (estimate or 0.0)

    def why_not(self, estimate: float | None) -> str:
        need = f"needs ~{estimate:.0f} s, " if estimate else ""
        return f"not started: {need}{max(0.0, self.left()):.0f} s left before the cap"


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


SUMMARY = "summary.md"  # in $OUT
PART_TITLES = {  # the suite's parts in their order (gpu_suite.sh), as the summary names them
    "training": "part 0, training on CUDA",
    "flux": "part 1, Flux parity and MFU",
    "engines": "part 2, engine step time and activation checkpointing",
    "autoencoders": "part 3, autoencoders",
    "data_stall": "part 4, data stall",
    "decoding": "part 5, clip decoding",
}


def read_records(out: Path) -> list[dict]:
    """The records of $OUT/rows.jsonl (a line cut short by a kill is dropped)."""
    path, records = out / ROWS, []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return records


def summary_lines(records: list[dict]) -> list[str]:
    """The suite's summary: first line part 0's pass or fail, then a table of every part that ran."""
    parts = {r["part"]: r for r in records if r["kind"] == "part"}
    training = parts.get("training")
    verdict = training["status"].upper() if training else "NOT RUN"
    lines = [f"{PART_TITLES['training']}: {verdict}", ""]
    lines += table(
        ["part", "status", "seconds", "cap s"],
        [[PART_TITLES.get(r["part"], r["part"]), r["status"], f"{r['seconds']:.0f}", f"{r['cap_s']:g}"]
         for r in parts.values()],
    )  # fmt: skip
    return lines


def main() -> None:
    """`python -m benchmarks.benchlib part NAME STATUS SECONDS CAP_S`: the suite records how a part ended
    (passed | failed | stopped: its cap ended it | not run: the suite's budget was spent) in
    $OUT/rows.jsonl and rewrites $OUT/summary.md."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("what", choices=["part"])
    p.add_argument("part")
    p.add_argument("status", choices=["passed", "failed", "stopped", "not run"])
    p.add_argument("seconds", type=float)
    p.add_argument("cap_s", type=float)
    a = p.parse_args()
    out = out_dir()
    if a.status == "stopped":
        record = dict(kind="stopped", part=a.part, cap_s=a.cap_s)
        print(stopped_line(record))
        if out is not None:
            write_out(out, record, ["", stopped_line(record), ""])
    if out is not None:
        write_out(out, dict(kind="part", part=a.part, status=a.status, seconds=a.seconds, cap_s=a.cap_s), [])
        (out / SUMMARY).write_text("\n".join(summary_lines(read_records(out))) + "\n")


if __name__ == "__main__":
    main()
