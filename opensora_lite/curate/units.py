"""Work units: the sources in a stable order, cut into units of `unit_size`; rank r of N takes units
r, r + N, ... Each unit is written to `<out>/parts/.tmp-unit-NNNNNN/` and renamed to `unit-NNNNNN/` with a
DONE file once complete, so a rerun after a crash or preemption skips finished units and redoes the rest
from scratch (a half-written unit is discarded, never appended to).

A unit holds `index.jsonl` (every clip's scores, kept or not, with the reason), `clips.tar` (the clips that
passed every per-clip stage: their video bytes, shard json and caption) and `thumbs/` (a few dropped
clips' sampled frames, for the report's contact sheets)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import av
import numpy as np

from opensora_lite.config.schema import CurateJobConfig
from opensora_lite.curate.clips import Source, clips_of
from opensora_lite.curate.stages import Stage, build_stages, clip_meta
from opensora_lite.data.video import VideoDecodeError
from opensora_lite.errors import ConfigError

log = logging.getLogger("opensora_lite.curate")
KILL_ENV = "OSL_CURATE_KILL_AFTER"  # tests: SIGKILL this process after that many sources (a crash mid-unit)
THUMB = (48, 64)  # the contact sheets' frame size


def rank_world(cfg: CurateJobConfig) -> tuple[int, int]:
    """This process's share: curate.rank/world, else a Slurm array task, else torchrun's RANK/WORLD_SIZE."""
    env = os.environ
    if cfg.rank is not None or cfg.world is not None:
        rank, world = cfg.rank or 0, cfg.world or 1
    elif "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        rank = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        world = int(env["SLURM_ARRAY_TASK_COUNT"])
    elif "RANK" in env and "WORLD_SIZE" in env:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    else:
        rank, world = 0, 1
    if not 0 <= rank < world:
        raise ConfigError("rank", f"rank {rank} is not in 0..{world - 1}")
    return rank, world


FREE_SETTINGS = ("rank", "world", "step", "workers", "examples", "out")  # may change between runs into one out


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def check_settings(cfg: CurateJobConfig, out: Path) -> None:
    """The parts hold decisions made with the settings of the run that wrote them: a run into the same `out`
    with other settings (thresholds, stages, source, unit size) is refused, naming the keys that differ.
    The first run records them in parts/CONFIG.json."""
    import dataclasses

    mine = json.loads(json.dumps(_flat({k: v for k, v in dataclasses.asdict(cfg).items() if k not in FREE_SETTINGS})))
    path = out / "parts" / "CONFIG.json"
    if path.is_file():
        theirs = json.loads(path.read_text())
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            raise ConfigError(
                diff[0],
                f"{out} holds units curated with other settings ({', '.join(diff)} differ: "
                f"{path}); give a new out, or delete {out / 'parts'} to redo every unit",
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-CONFIG-{os.getpid()}.json")
    tmp.write_text(json.dumps(mine, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def unit_name(u: int) -> str:
    return f"unit-{u:06d}"


def units_of(sources: list[Source], unit_size: int) -> list[list[tuple[int, Source]]]:
    items = list(enumerate(sources))
    return [items[i : i + unit_size] for i in range(0, len(items), unit_size)]


def is_done(parts: Path, u: int) -> bool:
    return (parts / unit_name(u) / "DONE").is_file()


class _Worker:
    """The stages of one process, built once (an OCR or CLIP model loads on first use)."""

    stages: list[Stage] = []
    cfg: CurateJobConfig | None = None
    processed = 0


def _init(cfg: CurateJobConfig) -> None:
    _Worker.cfg, _Worker.stages = cfg, build_stages(cfg)


def curate_source(item: tuple[int, Source]) -> list[dict]:
    """Every clip of one source scored: a row per clip (kept or not), with the clip's bytes, json and
    thumbnails attached to the row under private keys (`_data`, `_meta`, `_thumbs`)."""
    index, src = item
    cfg, stages = _Worker.cfg, _Worker.stages
    try:
        clips = clips_of(index, src, cfg)
    except (VideoDecodeError, av.error.FFmpegError, OSError, IndexError, ValueError) as exc:
        row = dict(key=f"{index:08d}_src", source=src.name, kept=False, stage="read", reason="unreadable")
        row["detail"] = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        rows = [row]
    else:
        rows = [_score(clip, stages, cfg) for clip in clips]
    _Worker.processed += 1
    if os.environ.get(KILL_ENV) and _Worker.processed >= int(os.environ[KILL_ENV]):
        os.kill(os.getpid(), signal.SIGKILL)
    return rows


def _score(clip, stages: list[Stage], cfg: CurateJobConfig) -> dict:
    row = dict(key=clip.key, source=clip.source, start=clip.start, end=clip.end, kept=True, stage=None, reason=None)
    scores: dict = {}
    for stage in stages:
        if not row["kept"] and not cfg.score_dropped:
            break
        try:
            scores.update(stage.score(clip))
        except (VideoDecodeError, av.error.FFmpegError) as exc:
            row.update(kept=False, stage=stage.name, reason="unreadable", detail=str(exc)[:200])
            break
        why = stage.keep(scores) if row["kept"] else None
        if why:
            row.update(kept=False, stage=stage.name, reason=stage.name, detail=why)
    row["scores"] = scores
    if row["kept"]:
        meta = dict(clip_meta(clip))
        if not meta:
            row.update(kept=False, stage="read", reason="unreadable", detail="the cut clip has no frames")
        else:
            meta.update(source=clip.source, start_frame=clip.start, end_frame=clip.end)
            row.update(_data=clip.data, _meta=meta, _caption=clip.caption, _ext=clip.ext)
    else:
        row["_thumbs"] = _strip(clip.samples)
    return row


def _strip(samples: list[np.ndarray]) -> np.ndarray:
    import cv2

    frames = [cv2.resize(f, (THUMB[1], THUMB[0]), interpolation=cv2.INTER_AREA) for f in samples]
    return np.stack(frames) if frames else np.zeros((1, *THUMB, 3), np.uint8)


def run_unit(u: int, items: list[tuple[int, Source]], cfg: CurateJobConfig, parts: Path, pool) -> dict:
    """Curate one unit into its part folder, atomically; counts of the unit."""
    import webdataset as wds

    tmp, final = parts / f".tmp-{unit_name(u)}", parts / unit_name(u)
    shutil.rmtree(tmp, ignore_errors=True)  # a previous attempt that died part-way
    shutil.rmtree(final, ignore_errors=True)  # renamed but without its DONE file: not trusted
    (tmp / "thumbs").mkdir(parents=True)
    results = pool.map(curate_source, items) if pool is not None else map(curate_source, items)
    counts = dict(sources=len(items), clips=0, candidates=0)
    per_reason: dict[str, int] = {}
    with open(tmp / "index.jsonl", "w", encoding="utf-8") as index, wds.TarWriter(str(tmp / "clips.tar")) as tar:
        for rows in results:
            for row in rows:
                counts["clips"] += 1
                data, meta, caption = row.pop("_data", None), row.pop("_meta", None), row.pop("_caption", "")
                thumbs, ext = row.pop("_thumbs", None), row.pop("_ext", "mp4")
                if data is not None:
                    tar.write(
                        {"__key__": row["key"], ext: data, "json": json.dumps(meta).encode(), "txt": caption.encode()}
                    )
                    counts["candidates"] += 1
                elif thumbs is not None and per_reason.get(row["reason"], 0) < cfg.examples:
                    per_reason[row["reason"]] = per_reason.get(row["reason"], 0) + 1
                    np.save(tmp / "thumbs" / f"{row['key']}.npy", thumbs)
                index.write(json.dumps(row, sort_keys=True) + "\n")
    (tmp / "DONE").write_text(json.dumps(dict(counts, host=socket.gethostname(), pid=os.getpid())) + "\n")
    tmp.rename(final)
    return counts


def run_units(cfg: CurateJobConfig, sources: list[Source], out: Path, rank: int, world: int) -> tuple[int, int]:
    """This rank's unfinished units; (units done now, units skipped as already done)."""
    parts = out / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    units = units_of(sources, cfg.unit_size)
    mine = [u for u in range(len(units)) if u % world == rank]
    todo = [u for u in mine if not is_done(parts, u)]
    log.info("rank %d of %d: %d of %d units to do (%d already done)", rank, world, len(todo), len(mine),
             len(mine) - len(todo))  # fmt: skip
    _init(cfg)
    pool = ProcessPoolExecutor(cfg.workers, initializer=_init, initargs=(cfg,)) if cfg.workers > 1 else None
    try:
        for u in todo:
            counts = run_unit(u, units[u], cfg, parts, pool)
            log.info("unit %d: %d sources, %d clips, %d pass", u, counts["sources"], counts["clips"],
                     counts["candidates"])  # fmt: skip
    finally:
        if pool is not None:
            pool.shutdown()
    return len(todo), len(mine) - len(todo)
