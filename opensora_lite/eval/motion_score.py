"""Reading a motion-score sweep: does the measured speed of generated clips rise with the prompted score?

The same prompts and seeds are sampled at several `sample.motion_score` values; each clip's speed is read
by the Shapes evaluator (frame extents per second, eval/shapes.py) and set against the score by Spearman's
rank correlation (ties take their mean rank), pooled over every clip and per prompt.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def ranks(values) -> np.ndarray:
    """1-based ranks of `values`, ties given the mean of the ranks they span."""
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    out = np.empty(len(x))
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        out[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x, y) -> float:
    """Spearman's rank correlation of two equal-length sequences (nan when either is constant)."""
    rx, ry = ranks(x), ranks(y)
    if len(rx) < 2 or rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def sweep_summary(scores: list[float], speeds: list[float], prompts: list[str]) -> dict:
    """Per clip (prompted score, measured speed, prompt): the pooled Spearman correlation, the mean of the
    per-prompt ones, and the mean and spread of the measured speed at each score."""
    by_prompt: dict[str, list[tuple[float, float]]] = defaultdict(list)
    by_score: dict[float, list[float]] = defaultdict(list)
    for s, v, p in zip(scores, speeds, prompts):
        by_prompt[p].append((s, v))
        by_score[s].append(v)
    per_prompt = {p: spearman(*zip(*pairs)) for p, pairs in by_prompt.items()}
    return {
        "spearman": spearman(scores, speeds),
        "spearman_per_prompt": per_prompt,
        "spearman_per_prompt_mean": float(np.nanmean(list(per_prompt.values()))),
        "speed_by_score": {s: (float(np.mean(v)), float(np.std(v))) for s, v in sorted(by_score.items())},
        "num_clips": len(scores),
    }
