"""The merge: every unit's index in unit order (so any number of ranks gives the same result), the
near-duplicate decision over all of them in that order, the kept clips written as training shards by the
ingest writer (`<out>/shards/`), the index (`<out>/index.jsonl`) and the report (`<out>/report/`).

`run(cfg)` is osl-curate: this rank's units, then the merge when every unit is done (taken by whichever
rank finishes last, under an exclusive lock file)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tarfile
from pathlib import Path

import numpy as np

from opensora_lite.config.schema import CurateJobConfig
from opensora_lite.curate.clips import list_sources
from opensora_lite.curate.report import table_lines, write_report
from opensora_lite.curate.stages import Deduper, build_stages
from opensora_lite.curate.units import THUMB, check_settings, is_done, rank_world, run_units, unit_name, units_of
from opensora_lite.data.ingest import Prepared, ShardSink
from opensora_lite.errors import ConfigError, DataError

log = logging.getLogger("opensora_lite.curate")


def _tar_samples(path: Path):
    """(key, {ext: bytes}) of a tar written by TarWriter, in order."""
    current, sample = None, {}
    with tarfile.open(path) as tar:
        for m in tar:
            key, _, ext = m.name.partition(".")
            if key != current and current is not None:
                yield current, sample
                sample = {}
            current = key
            sample[ext] = tar.extractfile(m).read()
    if current is not None:
        yield current, sample


def _frames(data: bytes, count: int) -> np.ndarray:
    from opensora_lite.data.video import decode_window, probe

    n = probe(data).num_frames
    stride = max(1, n // (count + 1))
    return decode_window(data, stride // 2, min(count, n), stride, THUMB)


def merge(cfg: CurateJobConfig, n_sources: int, out: Path) -> dict:
    """Merge every unit (all must be done) into shards, index and report; the report's summary."""
    parts = out / "parts"
    n_units = len(units_of(list(range(n_sources)), cfg.unit_size))
    missing = [u for u in range(n_units) if not is_done(parts, u)]
    if missing:
        raise DataError(f"{len(missing)} of {n_units} units are not done yet (first: {unit_name(missing[0])})")
    rows: list[dict] = []
    for u in range(n_units):
        with open(parts / unit_name(u) / "index.jsonl", encoding="utf-8") as fh:
            rows += [json.loads(line) for line in fh]
    dedup = "dedup" in cfg.stages
    deduper = Deduper(cfg.dedup.max_distance)
    for row in rows:
        if dedup and row["kept"] and row["scores"].get("phash"):
            dup, dist = deduper.check(row["key"], row["scores"]["phash"])
            row["scores"]["dup_distance"] = dist
            if dup is not None:
                row.update(kept=False, stage="dedup", reason="dedup", detail=f"{dist} bits from {dup}", dup_of=dup)
    kept = {r["key"] for r in rows if r["kept"]}
    dups = [r["key"] for r in rows if r.get("reason") == "dedup"][: cfg.examples]
    examples: dict[str, list] = {}
    reasons = {r["key"]: r["reason"] for r in rows}
    tmp = out / ".tmp-shards"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sink = ShardSink(tmp, cfg.samples_per_shard, cfg.prefix)
    for u in range(n_units):
        for key, sample in _tar_samples(parts / unit_name(u) / "clips.tar"):
            ext = next(e for e in sample if e not in ("json", "txt"))
            if key in kept:
                meta, caption = json.loads(sample["json"]), sample["txt"].decode("utf-8")
                sink.write(key, Prepared(True, meta["source"], ext=ext, data=sample[ext], meta=meta, caption=caption))
            elif key in dups:
                examples.setdefault("dedup", []).append((key, _frames(sample[ext], cfg.frames)))
        for thumb in sorted((parts / unit_name(u) / "thumbs").glob("*.npy")):
            reason = reasons[thumb.stem]
            if len(examples.setdefault(reason, [])) < cfg.examples:
                examples[reason].append((thumb.stem, np.load(thumb)))
    sink.close()
    shutil.rmtree(out / "shards", ignore_errors=True)
    tmp.rename(out / "shards")
    with open(out / ".tmp-index.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    os.replace(out / ".tmp-index.jsonl", out / "index.jsonl")
    details = {r["key"]: r.get("detail") or "" for r in rows}
    examples = {k: [(f"{key}: {details[key]}", v) for key, v in items] for k, items in examples.items()}
    summary = write_report(rows, build_stages(cfg), list(cfg.stages), n_sources, examples, out / "report")
    summary["shards"] = len(sink.shards)
    return summary


def run(cfg: CurateJobConfig) -> dict | None:
    """osl-curate: this rank's units, then the merge (step=all: when every unit is done); the summary when
    this process merged."""
    if cfg.step not in ("all", "units", "merge"):
        raise ConfigError("step", f"{cfg.step!r}: all | units | merge")
    build_stages(cfg)  # refuses a stage that cannot run before any work
    out = Path(cfg.out)
    sources = list_sources(cfg.source, cfg)
    if not sources:
        raise DataError(f"source {cfg.source}: no videos found")
    rank, world = rank_world(cfg)
    check_settings(cfg, out)
    if cfg.step in ("all", "units"):
        run_units(cfg, sources, out, rank, world)
    if cfg.step == "units":
        return None
    n_units = len(units_of(sources, cfg.unit_size))
    if cfg.step == "all":
        left = [u for u in range(n_units) if not is_done(out / "parts", u)]
        if left:
            print(f"rank {rank}: my units are done; {len(left)} units of other ranks are not (the last rank merges)")
            return None
        merged = out / "MERGED"
        done = max((out / "parts" / unit_name(u) / "DONE").stat().st_mtime for u in range(n_units))
        if merged.is_file() and merged.stat().st_mtime >= done:
            print(f"rank {rank}: my units are done; another rank merged them")
            return None
        lock = out / "merge.lock"
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            print(f"rank {rank}: another rank is merging ({lock}: {lock.read_text().strip()}; if none is, "
                  "remove it or run curate step=merge)")  # fmt: skip
            return None
        os.write(fd, f"{socket.gethostname()} pid {os.getpid()} rank {rank}\n".encode())
        os.close(fd)
        try:
            summary = merge(cfg, len(sources), out)
            merged.write_text(json.dumps(dict(kept=summary["kept"], clips=summary["clips"])) + "\n")
        finally:
            lock.unlink(missing_ok=True)
    else:
        summary = merge(cfg, len(sources), out)
        (out / "MERGED").write_text(json.dumps(dict(kept=summary["kept"], clips=summary["clips"])) + "\n")
    lines = table_lines(summary["stages"])
    log.info("clips in and out per stage:\n%s", "\n".join(lines))
    where = f"{out / 'shards'}; index {out / 'index.jsonl'}; report {out / 'report'}"
    print(f"kept {summary['kept']} of {summary['clips']} clips from {summary['sources']} sources in "
          f"{summary['shards']} shards: {where}")  # fmt: skip
    return summary
