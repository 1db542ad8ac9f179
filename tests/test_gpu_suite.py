"""The GPU suite (benchmarks/gpu_suite.sh, docs/gpu-suite.md) is ready for the one call a lent GPU allows:
every part, part 0's training with SIGTERM and resume included, runs in --smoke on the CPU writing what a
lent machine would bring back ($OUT), and those files convert into docs/benchmarks.md entries; a part
its cap stops keeps the rows it finished; the carry set documented is the venv's. No timing is asserted."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from benchmarks.carry_set import CARRIED, ROWS, norm
from benchmarks.returned import LAYOUT, MAX_FILES

HEADING = re.compile(r"^### .+, \d{4}-\d{2}-\d{2}, commit \S+$")


def _suite(out: Path, *args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "OUT": str(out), **(env or {})}
    cmd = ["bash", str(REPO / "benchmarks" / "gpu_suite.sh"), "--smoke", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]


def _rows(records: list[dict], part: str) -> list[list[str]]:
    return [r["cells"] for r in records if r["kind"] == "row" and r["part"] == part]


def _convert(out: Path, to: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.returned", str(out), "--to", str(to)],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return to.read_text()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One --smoke run of the whole suite, $OUT in a temporary folder."""
    out = tmp_path_factory.mktemp("out")
    proc = _suite(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def test_smoke_runs_every_part_and_returns_at_most_eight_files(smoke):
    out, stdout = smoke
    files = sorted(p.name for p in out.iterdir())
    assert set(files) == LAYOUT and len(files) <= MAX_FILES
    summary = (out / "summary.md").read_text().splitlines()
    assert summary[0] == "part 0, training on CUDA: PASSED"  # the first line of the suite's summary
    assert all(f"| {status}" not in "\n".join(summary) for status in ("failed", "stopped"))
    assert (out / "suite.log").read_text().strip().endswith(f"gpu_suite: results in {out}")
    records = _records(out)
    training = dict((r[0], r[1]) for r in _rows(records, "training"))
    assert training["SIGTERM to the process group mid-stage"].startswith("exit 3, checkpoint at t2v step")
    assert training["the same command resumes"].startswith("exit 0, from t2v step")
    assert re.match(r"(\d+)/\1 steps bitwise equal", training["same loss sequence as uninterrupted"])
    assert "DCP checkpoint at step" in training["fsdp2, one rank sharded: SIGTERM"]
    assert training["fsdp2 resumes from the DCP checkpoint"].startswith("exit 0")
    flux = [r[0] for r in _rows(records, "flux")]
    assert flux[:3] == [
        "1+1 blocks, 2 heads x 64, guidance False",
        "2+2 blocks, 4 heads x 128, guidance True",
        "2+4 blocks, 8 heads x 128, guidance False",
    ]  # parity before every MFU row, compiled rows last
    assert flux[3:] == [
        "opensora_lite",
        "diffusers",
        "ratio ours/diffusers",
        "ours + model.fused_qk_norm_rope",
        "ours + parallel.compile",
        "ours + both",
    ]
    engines = _rows(records, "engines")
    assert [r[0] for r in engines] == [
        "fsdp2",
        "fsdp2, 1+2 blocks at smoke size, AC off",
        "fsdp2, 1+2 blocks at smoke size, AC 2+2",
    ] and all(re.match(r"[0-9.]+$", r[2]) for r in engines)
    for ae in ("pixel", "dc_ae", "hunyuan", "wan"):  # encode and decode rates, tiny versions of each
        (row,) = [r for r in _rows(records, "autoencoders") if r[0] == ae]
        assert row[1].startswith("fp32") and re.match(r"\d+ -> [0-9x]+$", row[2]) and float(row[3]) > 0, row
    stalls = _rows(records, "data_stall")
    assert [r[0] for r in stalls] == ["1", "2"] and all(0 <= float(r[4]) <= 1 for r in stalls)
    assert [r[0] for r in _rows(records, "decoding")][-1] == "windowed + keyframe seek (ours)"
    assert "appended to" not in stdout


def test_returned_files_become_dated_benchmark_entries(smoke, tmp_path):
    """benchmarks/returned.py: one entry for the suite run (part 0's verdict first), then one per part,
    each as docs/benchmarks.md writes them (title, date, commit; machine and command; the tables)."""
    out, _ = smoke
    target = tmp_path / "benchmarks.md"
    target.write_text("# Benchmarks\n")
    text = _convert(out, target)
    entries = text.split("\n### ")[1:]
    assert len(entries) == 7  # the suite run + its six parts
    assert all(HEADING.match("### " + e.splitlines()[0]) for e in entries)
    assert entries[0].startswith("GPU suite run") and "part 0, training on CUDA: PASSED" in entries[0]
    assert all("\nMachine: " in e and "Command: `" in e for e in entries)
    tables = (out / "tables.md").read_text()
    for entry in entries[1:]:  # the parts' entries are what the run showed in tables.md
        assert "### " + entry.strip() in tables


def test_a_part_stopped_at_its_cap_keeps_the_rows_it_finished(tmp_path):
    """The data-stall part holds after its first row (a row that cannot finish) under a suite budget of
    40 s: its cap is cut to what is left of the budget, the cap ends it, and its first row stays in
    rows.jsonl, tables.md and the converted entry, with the stop said. The decoding part after it finds
    too little of the budget left and is not run; the suite exits 1 naming both."""
    out = tmp_path / "out"
    env = {"OSL_BENCH_STALL_AFTER_ROWS": "1", "OSL_SUITE_BUDGET_S": "40"}
    proc = _suite(out, "--parts", "data_stall decoding", env=env, timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    records = _records(out)
    (row,) = _rows(records, "data_stall")
    assert row[0] == "1" and 0 <= float(row[4]) <= 1
    assert [(r["part"], r["status"]) for r in records if r["kind"] == "part"] == [
        ("data_stall", "stopped"),
        ("decoding", "not run"),
    ]
    (cap,) = [r["cap_s"] for r in records if r["kind"] == "stopped"]
    assert cap < 40 - 10  # cut to the budget (its own cap in --smoke is 90 s)
    summary = (out / "summary.md").read_text()
    assert "| part 4, data stall | stopped |" in summary and "| part 5, clip decoding | not run |" in summary
    assert re.search(r"\n\| 1 \| [0-9.]+ \|", (out / "tables.md").read_text())
    text = _convert(out, tmp_path / "benchmarks.md")
    assert re.search(r"\n\| 1 \| [0-9.]+ \|", text) and f"Stopped by the suite at its {cap:g}-s cap" in text
    assert "| part 5, clip decoding | not run |" in text


def test_gpu_mode_refuses_without_a_gpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "", "OUT": str(tmp_path)}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_suite.sh")], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "no CUDA device visible" in proc.stdout


def test_commit_comes_from_the_environment_git_or_the_carried_file(tmp_path, monkeypatch):
    """benchlib.commit never needs git where there is none (a lent machine: the working tree without .git):
    $OSL_COMMIT, else git in a checkout (here, where .whl/COMMIT may be older), else .whl/COMMIT."""
    from benchmarks.benchlib import commit

    monkeypatch.delenv("OSL_COMMIT", raising=False)
    tree = tmp_path / "tree"
    (tree / ".whl").mkdir(parents=True)
    assert commit(tree) == "unknown"
    (tree / ".whl" / "COMMIT").write_text("abc1234\n")
    assert commit(tree) == "abc1234"
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if sha.returncode == 0:  # (a checkout with git, as here)
        assert commit(REPO).split("+")[0] == sha.stdout.strip()
    monkeypatch.setenv("OSL_COMMIT", "feed5ed")
    assert commit(tree) == commit(REPO) == "feed5ed"


def test_carry_pins_in_the_docs_match_the_venv():
    """docs/gpu-suite.md lists the carry set benchmarks/carry_set.py made: every carried wheel at exactly
    the version this venv runs (rerun the script and update the table when the venv changes), every
    distribution the script names, deepspeed and colossalai as not carried."""
    doc = (REPO / "docs" / "gpu-suite.md").read_text()
    table = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] in {name for name, _, _ in ROWS}:
            table[cells[0]] = cells
    assert set(table) == {name for name, _, _ in ROWS}
    for name in CARRIED:
        _, version, wheel, mib = table[name]
        assert version == md.version(name), f"{name}: the docs say {version}, the venv has {md.version(name)}"
        dist, wheel_version = wheel.split("-")[:2]
        assert (norm(dist), wheel_version) == (norm(name), version) and float(mib) > 0, wheel
    for name in ("deepspeed", "colossalai"):
        assert table[name][2].startswith("not carried")
