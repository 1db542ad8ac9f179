"""The bucket mix: what share of the samples a stage's bucket table puts in each bucket.

A data distribution is a list of clip kinds (frames, size, fps, weight). Each kind is offered to the
buckets exactly as `BucketTable.assign` does (largest resolution and longest clip first, kept with the
bucket's probability, else falling through), but in expectation instead of by a random draw. Three
sources: given (plan.samples), read from shard metadata (the json that `osl-data` writes), or uniform
over the table's (resolution, frames) entries.
"""

from __future__ import annotations

import io
import json
import math
import tarfile
from collections import Counter
from pathlib import Path

from opensora_lite.config.schema import SampleKind
from opensora_lite.data.buckets import Bucket, BucketTable, bucket_size
from opensora_lite.data.loader import expand_shards
from opensora_lite.data.video import temporal_stride
from opensora_lite.errors import ConfigError, DataError

Mix = dict[Bucket, float]  # bucket -> share of the samples (the shares of kept samples sum to 1)


def expected_buckets(table: BucketTable, kind: SampleKind, target_fps: float) -> tuple[Mix, float]:
    """Where one clip kind lands, as probabilities; and the probability no bucket keeps it."""
    frames = int(kind.num_frames)
    usable = 1 if frames <= 1 else (frames - 1) // temporal_stride(float(kind.fps), target_fps) + 1
    aspect = table.nearest_aspect(kind.height, kind.width)
    out: Mix = {}
    left = 1.0
    for px, n, prob, batch, res in table.entries:
        if kind.height * kind.width < px * px:
            continue
        if n > usable or (usable == 1 and n != 1):
            continue
        h, w = bucket_size(px, aspect, table.multiple)
        b = Bucket(res, n, h, w, batch)
        keep = left * min(prob, 1.0)
        out[b] = out.get(b, 0.0) + keep
        left -= keep
        if left <= 1e-12:
            break
    return out, max(left, 0.0)


def mix_from_kinds(table: BucketTable, kinds: list[SampleKind], target_fps: float, key: str) -> tuple[Mix, float]:
    """The bucket shares of kept samples for a weighted list of clip kinds; and the skipped fraction."""
    total = sum(max(k.weight, 0.0) for k in kinds)
    if not kinds or total <= 0:
        raise ConfigError(key, "the data distribution is empty (give clip kinds with a positive weight)")
    mix: Mix = {}
    skipped = 0.0
    for kind in kinds:
        if kind.num_frames < 1 or kind.height < 1 or kind.width < 1:
            raise ConfigError(key, f"clip kind {kind}: frames, height and width must be positive")
        got, left = expected_buckets(table, kind, target_fps)
        for b, p in got.items():
            mix[b] = mix.get(b, 0.0) + p * kind.weight / total
        skipped += left * kind.weight / total
    kept = 1.0 - skipped
    if kept <= 1e-9:
        raise ConfigError(key, "no bucket of the stage keeps any clip of this distribution (all too small or short)")
    return {b: p / kept for b, p in mix.items()}, skipped


def uniform_mix(table: BucketTable) -> Mix:
    """Every (resolution, frames) entry equally likely, at the aspect ratio closest to square."""
    aspect = min(table.aspect_ratios, key=lambda a: abs(math.log(a)))
    entries = table.entries
    return {
        Bucket(res, n, *bucket_size(px, aspect, table.multiple), batch): 1.0 / len(entries)
        for px, n, _, batch, res in entries
    }


def kinds_from_shards(spec: str, limit: int) -> tuple[list[SampleKind], int]:
    """Clip kinds (frames, size, fps; weight = count) from the json metadata of WebDataset shards, reading
    at most `limit` records; also the number of records seen (the dataset size when all were read)."""
    counts: Counter = Counter()
    seen = 0
    urls = expand_shards(spec)
    for url in urls:
        path = Path(url)
        if not path.is_file():
            raise DataError(f"data.shards: {url} is not a local file (plan.mix=shards reads local shards)")
        with tarfile.open(path) as tar:
            for member in tar:
                if not member.name.endswith(".json"):
                    continue
                meta = json.load(io.TextIOWrapper(tar.extractfile(member), encoding="utf-8"))
                try:
                    key = (int(meta["num_frames"]), int(meta["height"]), int(meta["width"]), float(meta["fps"]))
                except (KeyError, TypeError, ValueError):
                    raise DataError(f"{url}:{member.name}: metadata lacks num_frames/height/width/fps") from None
                counts[key] += 1
                seen += 1
                if seen >= limit:
                    break
        if seen >= limit:
            break
    if not counts:
        raise DataError(f"data.shards: no sample metadata (.json) found in {len(urls)} shard(s) of {spec}")
    kinds = [SampleKind(num_frames=f, height=h, width=w, fps=fps, weight=n) for (f, h, w, fps), n in counts.items()]
    return kinds, seen
