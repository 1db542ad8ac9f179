"""Where the test suite's time goes: wall seconds per test file (set-up, call and tear-down of each test,
module and session fixtures counted in the test that first asks for them), read from the JUnit report
that every pytest run writes (pyproject.toml's addopts: .pytest_cache/junit.xml).

    ./scripts/test.sh                                  # the whole suite, as CI runs it
    python -m benchmarks.suite_times                   # the table, slowest file first
    python -m benchmarks.suite_times --group audio='test_audio*,test_av_*,test_mel*,test_shapes_audio*'

A group sums the files its comma-separated patterns match: what one issue's tests add, read from the run
of the whole suite rather than from a run of those files alone (a shared session fixture is paid by
whichever file asks first, so a group alone may cost more than its share). Standard library only.
"""

from __future__ import annotations

import argparse
import fnmatch
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

REPORT = Path(__file__).resolve().parents[1] / ".pytest_cache" / "junit.xml"


def file_times(report: Path) -> tuple[dict[str, float], dict[str, int]]:
    """Seconds and test count per test file (tests/<name>.py) in a JUnit report."""
    seconds, counts = defaultdict(float), defaultdict(int)
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("classname", "").split(".")[-1] + ".py"  # tests.test_x -> test_x.py
        seconds[name] += float(case.get("time", 0.0))
        counts[name] += 1
    return dict(seconds), dict(counts)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--report", type=Path, default=REPORT)
    ap.add_argument("--group", action="append", default=[], metavar="NAME=PATTERNS")
    ap.add_argument("--top", type=int, default=0, help="only the N slowest files (0: all)")
    args = ap.parse_args(argv)
    if not args.report.is_file():
        raise SystemExit(f"no JUnit report at {args.report}: run the suite first (./scripts/test.sh)")
    seconds, counts = file_times(args.report)
    total = sum(seconds.values())
    rows = sorted(seconds, key=seconds.get, reverse=True)
    print("| file | tests | s | share |\n|---|---|---|---|")
    for name in rows[: args.top or None]:
        print(f"| {name} | {counts[name]} | {seconds[name]:.0f} | {seconds[name] / total:.1%} |")
    print(f"| all ({len(rows)} files) | {sum(counts.values())} | {total:.0f} | |")
    for group in args.group:
        label, _, patterns = group.partition("=")
        pats = [p.strip() for p in patterns.split(",") if p.strip()]
        hit = [n for n in rows if any(fnmatch.fnmatch(n, p) or fnmatch.fnmatch(n, p + ".py") for p in pats)]
        print(f"\n{label}: {sum(seconds[n] for n in hit):.0f} s over {sum(counts[n] for n in hit)} tests "
              f"in {len(hit)} files ({', '.join(hit) or 'none matched'})")  # fmt: skip


if __name__ == "__main__":
    main()
