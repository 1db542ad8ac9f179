"""The samples a stage's loader skipped, one a line in `<stage>/skipped.tsv` (as `osl-data` lists the
inputs it skipped): the step whose batch reported the skip, the sample key (empty for a whole shard),
the shard and the reason (the counts' reasons: no_bucket, corrupt_video, truncated_shard, ...).

Skips travel from the loader's workers with the batches (`skipped_rows`); every rank keeps its own until
the next checkpoint or the end of the stage, when rank 0 gathers them and appends them. A start keeps
the rows up to the step it starts from (a resumed run lists each skip once, as an uninterrupted one).
"""

from __future__ import annotations

from pathlib import Path

from opensora_lite.layout import SKIPPED_FILE as FILE
from opensora_lite.parallel.engine import Engine

HEADER = "step\tkey\tshard\treason\n"


class SkipList:
    def __init__(self, stage_dir: Path, engine: Engine, start: int):
        self.path, self.engine, self.rows = stage_dir / FILE, engine, []
        # ranks of one sequence-parallel group read the same batches: one of them lists them
        self.lists = engine.sp is None or engine.sp.rank == 0
        if engine.is_main and self.path.is_file():
            self._keep_until(start)

    def add(self, step: int, rows) -> None:
        """The skips a batch consumed at `step` (1-based) reported."""
        if self.lists:
            self.rows.extend((step, *row) for row in rows)

    def flush(self) -> None:
        """Append every rank's rows (each rank calls this: a gather)."""
        parts = self.engine.all_gather_object(self.rows)
        self.rows = []
        rows = sorted((row for part in parts for row in part), key=lambda row: row[0])
        if not (self.engine.is_main and rows):
            return
        new = not self.path.is_file()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            if new:
                fh.write(HEADER)
            fh.writelines("\t".join(str(v) for v in row) + "\n" for row in rows)

    def counts(self, counts: dict) -> dict:
        """Every rank's skip counts summed (each rank calls this: a gather)."""
        total: dict = {}
        for part in self.engine.all_gather_object(dict(counts) if self.lists else {}):
            for reason, n in part.items():
                total[reason] = total.get(reason, 0) + n
        return total

    def _keep_until(self, step: int) -> None:
        """Drop the rows past `step`: an earlier start listed them after its last checkpoint."""
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines[1:] if int(line.split("\t", 1)[0]) <= step]
        if len(kept) == len(lines) - 1:
            return
        tmp = self.path.with_name(f".tmp-{FILE}")
        tmp.write_text(HEADER + "".join(kept), encoding="utf-8")
        tmp.replace(self.path)
