#!/usr/bin/env python3
"""Make the carry set for a lent GPU machine: the wheels the GPU suite needs beyond the machine's image.

The lent machines reach no package registry; their image has Python 3.12 with torch, transformers,
numpy, safetensors, einops, pillow, ... (the device tool's KINDS.md). What the framework needs beyond it
travels in the call's `carry` as wheels, at exactly the versions of this project's venv (the one that
runs this script): pure-Python wheels as published, pure-Python sdists built into wheels here
(`pip wheel`: antlr4-python3-runtime 4.9.3 has no wheel and hydra-core 1.3 needs exactly 4.9), binary
wheels for CPython 3.12 on manylinux x86-64. They go to `.whl/` (git-ignored) with COMMIT (the commit
the suite's tables name; the machine gets the working tree without .git) and manifest.json.

The device tool moves at most 64 MiB per call: the working tree (tracked and untracked-not-ignored
files) plus what `carry` names. The script prints the total and refuses (exit 1) when the carry set
would not leave the working tree, plus --reserve-mib for edits before the call, room under 64 MiB.

    .venv/bin/python -m benchmarks.carry_set            # fetch/build what is missing, print the list and total
    .venv/bin/python -m benchmarks.carry_set --markdown # the same list as docs/gpu-suite.md's table
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import re
import subprocess
import sys
from pathlib import Path

from benchmarks.benchlib import CARRY, REPO

LIMIT_MIB = 64.0  # the device tool's limit on a call's working tree + carried paths
TARGET = ["--python-version", "3.12", "--implementation", "cp"]  # the image's python3 is 3.12 (KINDS.md)
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]

# (distribution, how it travels, why it is needed). how: wheel (as published, pure Python), sdist (built
# here with pip wheel), binary (a cp312 manylinux x86-64 wheel), or a sentence saying why it stays behind.
ROWS = [
    ("hydra-core", "wheel", "the config schema every entry point composes"),
    ("omegaconf", "wheel", "hydra's config objects (2.3.x: hydra-core 1.3 needs <2.4)"),
    ("antlr4-python3-runtime", "sdist", "omegaconf's interpolation grammar (exactly 4.9.x; no wheel published)"),
    ("diffusers", "wheel", "the VAEs and the Flux reference of the parity rows"),
    ("importlib-metadata", "wheel", "diffusers imports it; the image has none"),
    ("lazy-importer", "wheel", "importlib-metadata >= 9 imports it on Python < 3.15"),
    ("zipp", "wheel", "importlib-metadata's"),
    ("av", "binary", "PyAV (bundles FFmpeg): Shapes data, the loader, the decoding part"),
    ("webdataset", "wheel", "the shard reader"),
    ("braceexpand", "wheel", "shard patterns"),
    ("deepspeed", "not carried: publishes no wheel and builds ops against the image's CUDA torch", "its rows"),
    ("colossalai", "not carried: publishes no wheel and pins torch<=2.5.1 (docs/engines/colossalai.md)", "its rows"),
    (
        "transformers",
        "not carried: the image's 5.17.0 is used; this venv's needs huggingface_hub>=2.4 with httpx2, kernels "
        "and hf-xet 1.8 (~23 MiB with them: no room beside PyAV)",
        "the tiny T5/CLIP",
    ),
    ("torch", "not carried: the image's CUDA build (2.11.0+cu130) is used", "everything"),
]
CARRIED = [name for name, how, _ in ROWS if how in ("wheel", "sdist", "binary")]


def norm(name: str) -> str:
    """A distribution name as wheel files spell it (PEP 427: runs of -_. become _, lower case)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def venv_version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def wheel_of(folder: Path, name: str, version: str | None = None) -> list[Path]:
    """Wheel files of `name` (at `version`) in `folder`."""
    found = []
    for path in folder.glob("*.whl"):
        dist, ver = path.name.split("-")[:2]
        if norm(dist) == norm(name) and (version is None or ver == version):
            found.append(path)
    return found


def fetch(name: str, version: str, how: str, folder: Path) -> Path:
    """The wheel of name==version in `folder`: kept if there, else downloaded or built."""
    for stale in wheel_of(folder, name):  # one version of each: two stop the whole install there
        if stale not in wheel_of(folder, name, version):
            stale.unlink()
    if have := wheel_of(folder, name, version):
        return have[0]
    pin = f"{name}=={version}"
    if how == "sdist":
        cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-binary", name, "-w", str(folder), pin]
    else:
        platforms = [a for p in PLATFORMS for a in ("--platform", p)]
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", *TARGET, *platforms]
        cmd += ["-d", str(folder), pin]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not wheel_of(folder, name, version):
        raise SystemExit(f"carry_set: could not get {pin} ({how}):\n{done.stderr.strip()[-1500:]}")
    return wheel_of(folder, name, version)[0]


def tree_mib() -> float:
    """What the device tool moves besides `carry`: tracked and untracked-not-ignored files."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    )
    paths = [REPO / p for p in out.stdout.decode().split("\0") if p]
    return sum(p.stat().st_size for p in paths if p.is_file()) / 2**20


def git_commit() -> str:
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True)
    return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def markdown(rows: list[dict], total: float, tree: float) -> list[str]:
    lines = ["| distribution | venv version | carried as | MiB |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['version'] or '-'} | {r['file'] or r['how']} | {r['mib']:.2f} |")
    lines.append(f"| **total** | | {sum(1 for r in rows if r['file'])} files | {total:.2f} |")
    return lines + ["", f"Working tree {tree:.2f} MiB; with the carry set {tree + total:.2f} of {LIMIT_MIB:g} MiB."]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", type=Path, default=CARRY, help="where the carry set goes (git-ignored)")
    p.add_argument("--reserve-mib", type=float, default=2.0, help="room kept for the working tree to grow")
    p.add_argument("--markdown", action="store_true", help="print the list as docs/gpu-suite.md's table")
    a = p.parse_args()
    a.folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, how, why in ROWS:
        version = venv_version(name)
        row = dict(name=name, version=version, how=how, why=why, file=None, mib=0.0)
        if name in CARRIED:
            if version is None:
                raise SystemExit(f"carry_set: {name} is not installed in {sys.prefix}; run scripts/install.sh dev")
            path = fetch(name, version, how, a.folder)
            row.update(file=path.name, mib=path.stat().st_size / 2**20)
        rows.append(row)
    keep = {r["file"] for r in rows if r["file"]}
    for extra in a.folder.glob("*.whl"):  # a wheel no row names would be installed there too
        if extra.name not in keep:
            extra.unlink()
    total, tree = sum(r["mib"] for r in rows), tree_mib()
    sha = git_commit()
    (a.folder / "COMMIT").write_text(sha + "\n")
    (a.folder / "manifest.json").write_text(json.dumps({"commit": sha, "rows": rows}, indent=1) + "\n")
    print("\n".join(markdown(rows, total, tree)))
    room = LIMIT_MIB - tree - a.reserve_mib
    if total > room:
        print(
            f"carry_set: REFUSED: {total:.1f} MiB of wheels leave the {tree:.1f} MiB working tree (+{a.reserve_mib:g} "
            f"reserved) no room under {LIMIT_MIB:g} MiB; carry less",
            file=sys.stderr,
        )
        sys.exit(1)
    if not a.markdown:
        print(f"\ncarry_set: {len(keep)} wheels, {total:.1f} MiB in {a.folder} (commit {sha}); the call carries "
              f"{a.folder.relative_to(REPO) if a.folder.is_relative_to(REPO) else a.folder}")  # fmt: skip


if __name__ == "__main__":
    main()
