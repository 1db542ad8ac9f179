"""Multi-resolution / multi-duration buckets with Open-Sora 2.0's semantics.

A bucket table is {resolution: {num_frames: (probability, batch_size)}}, e.g.
{"256px": {1: (1.0, 45), 33: (1.0, 12)}}. "256px" means an area of about 256 x 256; each resolution
has an aspect-ratio table (h / w -> (h, w)) with sides that are multiples of what the autoencoder and
patch size need. A sample is offered to the buckets it fits (large enough, long enough), largest
resolution and longest duration first, and stays in each with that bucket's probability, otherwise
falling through to the next; a sample no bucket keeps is skipped. Images only fit 1-frame buckets;
videos fit 1-frame buckets too (one random frame).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

_RES = re.compile(r"^(\d+)px$")


def parse_resolution(name: str) -> int:
    m = _RES.match(str(name))
    if not m:
        raise ValueError(f"resolution {name!r} must look like '256px'")
    return int(m.group(1))


def bucket_size(resolution: int, aspect_ratio: float, multiple: int) -> tuple[int, int]:
    """(h, w) with h / w close to aspect_ratio, h * w close to resolution^2, both multiples of `multiple`."""
    h = resolution * math.sqrt(aspect_ratio)
    w = resolution / math.sqrt(aspect_ratio)
    return max(multiple, round(h / multiple) * multiple), max(multiple, round(w / multiple) * multiple)


@dataclass(frozen=True)
class Bucket:
    resolution: str
    num_frames: int
    height: int
    width: int
    batch_size: int

    @property
    def key(self) -> str:
        return f"{self.resolution}-{self.num_frames}f-{self.height}x{self.width}"


class BucketTable:
    """Assigns samples to buckets. `multiple`: spatial granularity (autoencoder factor x patch size)."""

    def __init__(self, table: dict, aspect_ratios: list[float], multiple: int):
        self.aspect_ratios = sorted(float(a) for a in aspect_ratios)
        self.multiple = multiple
        entries = []
        for res, frames in table.items():
            px = parse_resolution(res)
            for num_frames, (prob, batch) in frames.items():
                if int(batch) != batch or batch < 1:
                    raise ValueError(f"bucket {res}/{num_frames}: batch size must be a positive integer, got {batch}")
                entries.append((px, int(num_frames), float(prob), int(batch), res))
        # Largest resolution first, then longest clip first: a sample lands in the biggest bucket it fits.
        self.entries = sorted(entries, key=lambda e: (-e[0], -e[1]))
        if not self.entries:
            raise ValueError("bucket table is empty")

    def nearest_aspect(self, height: int, width: int) -> float:
        ratio = height / width
        return min(self.aspect_ratios, key=lambda a: abs(math.log(ratio / a)))

    def assign(self, height: int, width: int, num_frames: int, rng: random.Random) -> Bucket | None:
        """Bucket for a sample with `num_frames` usable frames (after temporal stride), or None."""
        aspect = self.nearest_aspect(height, width)
        for px, frames, prob, batch, res in self.entries:
            if height * width < px * px:
                continue  # too small to crop at this resolution without upscaling
            if frames > num_frames or (num_frames == 1 and frames != 1):
                continue
            if prob >= 1.0 or rng.random() < prob:
                h, w = bucket_size(px, aspect, self.multiple)
                return Bucket(res, frames, h, w, batch)
        return None

    def batch_size(self, resolution: str, num_frames: int) -> int | None:
        """The batch size of a (resolution, frames) entry, or None when the table has no such entry."""
        for _, frames, _, batch, res in self.entries:
            if res == resolution and frames == num_frames:
                return batch
        return None


def aspect_table(resolution: str, aspect_ratios: list[float], multiple: int) -> dict[float, tuple[int, int]]:
    """The (h, w) of every aspect ratio at one resolution (documentation and tests)."""
    px = parse_resolution(resolution)
    return {a: bucket_size(px, a, multiple) for a in aspect_ratios}
