#!/usr/bin/env python3
"""Turn the files a GPU suite run brought back ($OUT, docs/gpu-suite.md) into dated docs/benchmarks.md entries.

The suite leaves, in $OUT: rows.jsonl (every heading, paragraph, table header and row of every part, as
measured, and how each part ended), tables.md (the same rendered), summary.md and suite.log. This script
checks that layout, renders rows.jsonl into entries in the format every other entry of docs/benchmarks.md
has (title, date, commit; machine and command; tables), with a first entry for the suite run (part 0's
pass or fail first), and appends them.

    python -m benchmarks.returned /work/.device/<files_at>       # check, print and append
    python -m benchmarks.returned FOLDER --dry-run                 # check and print only
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.benchlib import BENCHMARKS, ROWS, SUMMARY, TABLES, heading_lines, read_records, render, summary_lines

LOG = "suite.log"
LAYOUT = {ROWS, TABLES, SUMMARY, LOG}  # what the suite writes to $OUT
MAX_FILES = 8  # what the device tool brings back from $OUT


def check_layout(folder: Path) -> list[str]:
    """What is wrong with a returned folder (empty: nothing)."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    problems = []
    if len(files) > MAX_FILES:
        problems.append(f"{len(files)} files: the device tool brings back at most {MAX_FILES}")
    unknown = sorted(str(p.relative_to(folder)) for p in files if str(p.relative_to(folder)) not in LAYOUT)
    if unknown:
        problems.append(f"files the suite does not write: {unknown}")
    if not (folder / ROWS).is_file():
        problems.append(f"no {ROWS}: nothing to convert")
    return problems


def entries(records: list[dict]) -> list[list[str]]:
    """Markdown entries: the suite run's summary first, then each part's entry as it was measured."""
    groups: list[list[dict]] = []
    open_by_part: dict[str, list[dict]] = {}
    outcome = {r["part"]: r["status"] for r in records if r["kind"] == "part"}
    for r in records:
        if r["kind"] == "heading":
            groups.append([r])
            open_by_part[r.get("part", "")] = groups[-1]
        elif r["kind"] in ("text", "table", "row", "end", "stopped"):
            group = open_by_part.get(r.get("part", ""))
            if group is None:  # a part stopped before it wrote its heading: the summary names it
                continue
            group.append(r)
    out = []
    headings = [r for r in records if r["kind"] == "heading"]
    if any(r["kind"] == "part" for r in records) and headings:
        first = headings[0]
        title = "GPU suite run (part 0 first: training on CUDA)"
        lines = heading_lines(title, first["date"], first["commit"], first["machine"], "benchmarks/gpu_suite.sh")
        out.append(lines + summary_lines(records))
    for group in groups:
        kinds = {r["kind"] for r in group}
        lines = render(group)
        while lines and not lines[-1]:
            lines.pop()
        status = outcome.get(group[0].get("part", ""))
        if "end" not in kinds and "stopped" not in kinds:
            lines += ["", f"(This part ended before its entry was complete, status {status or 'unknown'}: the rows "
                      "above are those it finished; its log is in the run's suite.log.)"]  # fmt: skip
        out.append(lines)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="the returned $OUT files")
    p.add_argument("--to", type=Path, default=BENCHMARKS, help="the file the entries are appended to")
    p.add_argument("--dry-run", action="store_true", help="check and print; append nothing")
    a = p.parse_args()
    problems = check_layout(a.folder)
    for problem in problems:
        print(f"returned: {problem}", file=sys.stderr)
    if not (a.folder / ROWS).is_file():
        sys.exit(1)
    text = "".join("\n" + "\n".join(lines).rstrip("\n") + "\n" for lines in entries(read_records(a.folder)))
    print(text)
    if not a.dry_run:
        with open(a.to, "a") as f:
            f.write(text)
        print(f"appended to {a.to}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
