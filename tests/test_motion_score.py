"""Motion-score conditioning's parts (experiment=tiny_motion_score, benchmarks/bench_motion_score.py): Shapes
written as plain files, ingested like real videos with VMAF motion measured, captions that carry the score
and not the speed word; the rank correlation the sweep is judged by."""

from __future__ import annotations

import json
import math
import tarfile

import numpy as np
import pytest
from conftest import compose

from opensora_lite.data.captions import format_caption
from opensora_lite.eval.motion_score import ranks, spearman, sweep_summary


def test_spearman_of_known_values():
    assert list(ranks([3, 1, 3, 2])) == [3.5, 1.0, 3.5, 2.0]  # ties share the mean of their ranks
    assert spearman([1, 2, 3, 4], [10, 20, 25, 100]) == pytest.approx(1.0)  # ranks, not values
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # x ranks 1, 2.5, 2.5, 4; y ranks 1, 3, 2, 4: 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    out = sweep_summary([1, 2, 3, 1, 2, 3], [0.2, 0.4, 0.6, 0.9, 0.5, 0.1], ["a", "a", "a", "b", "b", "b"])
    assert out["spearman_per_prompt"] == {"a": pytest.approx(1.0), "b": pytest.approx(-1.0)}
    assert out["spearman_per_prompt_mean"] == pytest.approx(0.0) and out["num_clips"] == 6
    assert out["speed_by_score"][1][0] == pytest.approx(0.55)


def test_bench_score_plan_common_given_or_per_colour():
    from benchmarks.bench_motion_score import PROMPTS, score_plan

    # red clips score 1-5, yellow 4-10 (VMAF motion grows with contrast), the other colours 2-6
    data = [{"colour": c, "score": s} for c in ("red", "blue") for s in range(1, 6)]
    data += [{"colour": "yellow", "score": s} for s in range(4, 11)]
    data += [{"colour": c, "score": s} for c in ("green", "magenta", "cyan") for s in range(2, 7)]
    assert score_plan(data, [2, 3], None) == {p: [2, 3] for p in PROMPTS}
    common = score_plan(data, None, None)  # the pooled 5th-95th percentile, every prompt
    assert len({tuple(v) for v in common.values()}) == 1
    plan = score_plan(data, None, 5)
    assert plan["a red circle moving right"] == [1, 2, 3, 4, 5]
    assert plan["a yellow circle moving down"][0] == 4 and plan["a yellow circle moving down"][-1] == 10
    assert all(len(v) == 5 for v in plan.values())


def test_shapes_files_ingest_with_a_motion_score_that_rises_with_speed(motion_data):
    """`osl-data shapes=motion` also writes each clip as mp4 + caption + labels; `kind=videos` ingests them
    and measures VMAF motion, which rises with the rendered speed for each colour; the opensora2 caption
    then names the rounded score and no speed word."""
    clips, shards = motion_data
    assert len(list(clips.glob("clip*.mp4"))) == len(list(clips.glob("clip*.txt"))) == 36
    assert not list(clips.glob("*.partial"))
    template = compose(["experiment=tiny_motion_score"]).data.caption_template
    speeds = compose(["shapes=motion"], "build_data").shapes.speeds
    rows = []
    with tarfile.open(next(shards.glob("*.tar"))) as tar:
        for m in tar.getmembers():
            if m.name.endswith(".json"):
                meta = json.loads(tar.extractfile(m).read())
                labels = json.loads(open(meta["source"][:-4] + ".json").read())
                caption = tar.extractfile(m.name[:-5] + ".txt").read().decode()
                assert (
                    caption
                    == labels["caption"]
                    == f"a {labels['colour']} {labels['shape']} moving {labels['direction']}"
                )
                full = format_caption(template, caption, meta, 8.0)
                assert full == f"{caption} 8 FPS, {int(meta['vmaf_motion'] + 0.5)} motion score."
                rows.append((labels["colour"], speeds[labels["speed"]], meta["vmaf_motion"]))
    assert {r[1] for r in rows} == {0.3, 0.45, 0.6, 0.75, 0.9, 1.05}
    per_colour = [
        spearman([r[1] for r in rows if r[0] == c], [r[2] for r in rows if r[0] == c]) for c in {r[0] for r in rows}
    ]
    assert np.nanmean(per_colour) > 0.7, per_colour  # the score tells the speed, given the colour
    assert max(r[2] for r in rows) > 3 * min(r[2] for r in rows)
