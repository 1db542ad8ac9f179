"""osl-curate on real mp4s with known contents (PyAV encodes them here): each stage keeps and drops the
right clips, the kept ones land in shards that osl-data's loader reads and osl-train trains on, 2 ranks
give what 1 rank gives, a rank killed mid-unit loses nothing when rerun, and a real Slurm array runs it."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import BIN, REPO, cli, mini_overrides
from test_slurm import _wait, slurm  # noqa: F401 (slurm: the local cluster fixture)

from benchmarks.bench_curate import scene
from opensora_lite.data.video import encode_mp4

H, W, FPS, N = 96, 128, 12.0, 30  # 2.5-s clips
COMMON = ["bounds.min_duration=1.0", "unit_size=2"]
SCORES = ("duration", "flow", "motion_score", "vmaf_motion", "sharpness", "text_area", "phash")


def _scene(seed: int, n: int, speed: float = 3.0, blur: float = 0.0, text: str | None = None) -> np.ndarray:
    """Coloured discs and boxes on a plain ground, panning `speed` px a frame; blurred; with a caption
    burnt in (cv2.putText): the benchmark's corpus at 96 x 128."""
    return scene(seed, n, H, W, speed, blur, text)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """Eight sources, each with one thing the curation must notice (and a caption sidecar)."""
    root = tmp_path_factory.mktemp("raw")
    clips = dict(
        a_moving=_scene(1, N),
        b_static=_scene(2, N, speed=0),
        c_blurred=_scene(3, N, blur=3.0),
        d_text=_scene(4, N, text="SALE 50"),
        e_short=_scene(5, 6),
        f_cut=np.concatenate([_scene(6, N), _scene(7, N)]),  # a hard cut at frame 30
    )
    for name, frames in clips.items():
        (root / f"{name}.mp4").write_bytes(encode_mp4(frames, FPS))
        (root / f"{name}.txt").write_text(f"clip {name}")
    (root / "g_copy.mp4").write_bytes(encode_mp4(clips["a_moving"], FPS, crf=32))  # re-encoded, lower quality
    (root / "g_copy.txt").write_text("a copy")
    (root / "h_corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    return root


def _curate(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return cli("osl-curate", *args, env={"OMP_NUM_THREADS": "1", **(env or {})})


def _index(out: Path) -> dict[str, dict]:
    return {r["key"]: r for r in map(json.loads, (out / "index.jsonl").read_text().splitlines())}


def _shard_samples(out: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return samples


@pytest.fixture(scope="module")
def one_rank(raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "out"
    proc = _curate(f"source={raw}", f"out={out}", *COMMON)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "kept 3 of 8 clips from 8 sources" in proc.stdout, proc.stdout
    assert "clips in and out per stage:\n| stage | in | out | dropped |" in proc.stdout  # the table in the log
    assert "| ocr | 5 | 4 | 1 |\n| dedup | 4 | 3 | 1 |" in proc.stdout
    return out


def _by_name(index: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in index.values():
        out.setdefault(Path(row["source"]).stem, []).append(row)
    return out


def test_each_stage_drops_the_clip_it_should(one_rank):
    rows = _by_name(_index(one_rank))
    assert [r["kept"] for r in rows["a_moving"]] == [True]
    cut = sorted(rows["f_cut"], key=lambda r: r["start"])  # the hard cut is split, both scenes kept
    assert [(r["start"], r["end"], r["kept"]) for r in cut] == [(0, 30, True), (30, 60, True)]
    expect = dict(b_static="motion", c_blurred="blur", d_text="ocr", e_short="bounds", g_copy="dedup")
    for name, stage in expect.items():
        (row,) = rows[name]
        assert (row["kept"], row["stage"]) == (False, stage), row
    assert rows["e_short"][0]["detail"].startswith("duration 0.5 < 1")
    assert rows["g_copy"][0]["dup_of"] == rows["a_moving"][0]["key"]  # the first in source order is kept
    (bad,) = rows["h_corrupt"]
    assert (bad["kept"], bad["reason"]) == (False, "unreadable") and "Traceback" not in bad["detail"]
    # every clip that was read is scored at every stage, kept or not (score_dropped)
    for row in (r for rs in rows.values() for r in rs if r["reason"] != "unreadable"):
        assert set(SCORES) <= set(row["scores"])
    s = {name: rs[0]["scores"] for name, rs in rows.items() if name != "h_corrupt"}
    assert s["b_static"]["flow"] < 0.5 < 5 < s["a_moving"]["flow"]  # the two motion measures agree here
    assert s["b_static"]["vmaf_motion"] < 0.1 < 1 < s["a_moving"]["vmaf_motion"]
    assert s["c_blurred"]["sharpness"] < 20 < 200 < s["a_moving"]["sharpness"]
    assert s["d_text"]["text_area"] > 0.1 and s["a_moving"]["text_area"] == 0.0


def test_kept_clips_are_osl_data_shards_with_the_caption_fields(one_rank, raw):
    from opensora_lite.data.ingest import video_meta

    samples = _shard_samples(one_rank)
    index = _index(one_rank)
    assert sorted(samples) == sorted(k for k, r in index.items() if r["kept"])
    for key, sample in samples.items():
        assert set(sample) == {"mp4", "json", "txt"}
        meta = json.loads(sample["json"])
        assert {k: meta[k] for k in video_meta(sample["mp4"])} == video_meta(sample["mp4"])  # as ingest writes it
        assert meta["num_frames"] == index[key]["end"] - index[key]["start"] and meta["fps"] == FPS
        assert meta["motion_score"] == index[key]["scores"]["motion_score"]
    whole = next(s for k, s in samples.items() if "a_moving" in k)
    assert whole["mp4"] == (raw / "a_moving.mp4").read_bytes()  # a one-window source keeps its bytes
    assert whole["txt"] == b"clip a_moving"
    report = one_rank / "report"
    assert {p.name for p in report.glob("*.png")} == {
        "histograms.png",
        *(f"dropped_{r}.png" for r in ("bounds", "motion", "blur", "ocr", "dedup", "unreadable")),
    } - {"dropped_unreadable.png"}
    table = json.loads((report / "summary.json").read_text())["stages"]
    assert [(t["stage"], t["in"], t["out"]) for t in table] == [
        ("read+split", 8, 8), ("bounds", 8, 7), ("motion", 7, 6), ("blur", 6, 5), ("ocr", 5, 4), ("dedup", 4, 3)
    ]  # fmt: skip


def test_curated_shards_train(one_rank, tmp_path):
    """osl-train runs a few t2v steps on the curated shards (4:3 clips, 12 fps) with Open-Sora 2.0's captions
    ("... 12 FPS, 3 motion score.": the fields the curated json carries; a missing one skips every sample)."""
    out = cli(
        "osl-train",
        *mini_overrides(one_rank / "shards", tmp_path),
        "run.stage=t2v",
        "curriculum.stages.t2v.init=none",
        "curriculum.stages.t2v.steps=2",
        "data.aspect_ratios=[1.3333]",
        "caption=opensora2",
        "sample.motion_score=4",
        "eval.kind=null",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = [json.loads(line) for line in (tmp_path / "mini" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in metrics if "loss" in r]
    assert len(losses) == 2 and all(np.isfinite(losses))
    skipped = "".join(f.read_text() for f in (tmp_path / "mini").rglob("skipped.tsv"))
    assert "caption_template_field" not in skipped and "missing_caption" not in skipped, skipped


def test_a_stage_without_its_weights_is_refused_in_one_line(raw, tmp_path):
    proc = _curate(f"source={raw}", f"out={tmp_path / 'out'}", "stages=[split,bounds,aesthetic]")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: aesthetic.clip: the aesthetic stage needs local weights (aesthetic.clip: a CLIP folder, "
        "aesthetic.head: the MLP's safetensors); give them or remove aesthetic from stages"
    ]
    assert not (tmp_path / "out").exists()


def test_a_rerun_with_other_thresholds_into_the_same_out_is_refused(raw, one_rank):
    before = (one_rank / "index.jsonl").read_text()
    proc = _curate(f"source={raw}", f"out={one_rank}", *COMMON, "motion.min=3", "workers=2")  # workers may change
    assert (
        proc.returncode == 2
        and proc.stderr.strip().startswith("error: motion.min: ")
        and "motion.min differ" in proc.stderr
    )
    assert len(proc.stderr.strip().splitlines()) == 1 and (one_rank / "index.jsonl").read_text() == before


def test_aesthetic_scores_with_local_weights(raw, tmp_path):
    """A tiny random CLIP and MLP head from local paths: every clip gets a score and min drops below it."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    clip_cfg = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        patch_size=8, projection_dim=16,
    )  # fmt: skip
    CLIPVisionModelWithProjection(clip_cfg).save_pretrained(tmp_path / "clip")
    head = {"layers.0.weight": torch.randn(8, 16), "layers.0.bias": torch.zeros(8)}
    head.update({"layers.2.weight": torch.randn(1, 8), "layers.2.bias": torch.full((1,), 5.0)})
    save_file(head, tmp_path / "head.safetensors")
    weights = [f"aesthetic.clip={tmp_path / 'clip'}", f"aesthetic.head={tmp_path / 'head.safetensors'}"]
    proc = _curate(
        f"source={raw}", f"out={tmp_path / 'out'}", "stages=[bounds,aesthetic]", "aesthetic.min=null", *weights
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    scores = {k: r["scores"]["aesthetic"] for k, r in _index(tmp_path / "out").items() if r["reason"] != "unreadable"}
    assert len(scores) == 7 and len(set(scores.values())) > 1  # f_cut is one clip here: no split stage
    middle = float(np.median(list(scores.values())))
    proc = _curate(
        f"source={raw}", f"out={tmp_path / 'cut'}", "stages=[aesthetic]", f"aesthetic.min={middle}", *weights
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for key, row in _index(tmp_path / "cut").items():
        if key in scores:
            assert row["kept"] == (scores[key] >= middle) and row["reason"] in (None, "aesthetic")


def _same_result(out: Path, ref: Path) -> None:
    assert (out / "index.jsonl").read_text() == (ref / "index.jsonl").read_text()
    assert _shard_samples(out) == _shard_samples(ref)


def test_two_ranks_give_what_one_rank_gives(raw, one_rank, tmp_path):
    """Two ranks at once (curate.rank/world; rank 0 with 2 worker processes); dedup spans them (a_moving is
    unit 0, its copy unit 3)."""
    out = tmp_path / "out"
    procs = [
        subprocess.Popen(
            [
                str(BIN / "osl-curate"),
                f"source={raw}",
                f"out={out}",
                *COMMON,
                f"rank={r}",
                "world=2",
                f"workers={2 - r}",
            ],
            cwd=REPO,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for r in (0, 1)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sum("kept 3 of 8 clips" in o for o, _ in outputs) == 1  # one of them merged
    _same_result(out, one_rank)


def test_a_rank_killed_mid_unit_loses_nothing_on_rerun(raw, one_rank, tmp_path):
    """torchrun's RANK/WORLD_SIZE; rank 1 is SIGKILLed after 3 sources (its unit 1 done, unit 3 half
    done); rank 0 finishes and cannot merge; rank 1's rerun skips unit 1, redoes unit 3 and merges."""
    out = tmp_path / "out"
    args = [f"source={raw}", f"out={out}", *COMMON]
    killed = _curate(*args, env={"RANK": "1", "WORLD_SIZE": "2", "OSL_CURATE_KILL_AFTER": "3"})
    assert killed.returncode == -9
    parts = out / "parts"
    assert (parts / "unit-000001" / "DONE").is_file() and (parts / ".tmp-unit-000003").is_dir()
    first = _curate(*args, env={"RANK": "0", "WORLD_SIZE": "2"})
    assert first.returncode == 0 and "1 units of other ranks are not" in first.stdout, first.stdout
    assert not (out / "index.jsonl").exists()
    rerun = _curate(*args, env={"RANK": "1", "WORLD_SIZE": "2"})
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "1 of 2 units to do (1 already done)" in rerun.stdout and "kept 3 of 8 clips" in rerun.stdout
    assert not list(parts.glob(".tmp-*"))
    _same_result(out, one_rank)


def test_a_slurm_array_curates_and_merges(slurm, raw, one_rank, tmp_path):  # noqa: F811
    """`osl-submit --curate 2` queues slurm/curate_array.sbatch as a 2-task array on the local cluster; the
    last task merges; the result is the 1-rank run's. A stage without weights is refused before queuing."""
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(OSL_VENV=str(BIN.parent))
    submit = [str(BIN / "osl-submit"), "--curate", "2", "--sbatch=--cpus-per-task=1",
              f"--sbatch=--output={tmp_path}/slurm-%A_%a.out", f"source={raw}", f"out={out}", *COMMON]  # fmt: skip
    refused = subprocess.run([*submit, "stages=[aesthetic]"], cwd=REPO, env=env, capture_output=True, text=True)
    assert refused.returncode == 1 and refused.stderr.startswith("error: aesthetic.clip: "), refused.stderr
    sub = subprocess.run(submit, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert sub.returncode == 0, sub.stderr
    job = sub.stdout.strip().removeprefix("curate: job ").split()[0]
    infos = [_wait(f"{job}_{i}", 300) for i in (0, 1)]
    logs = [(tmp_path / f"slurm-{job}_{i}.out").read_text() for i in (0, 1)]
    assert [i["JobState"] for i in infos] == ["COMPLETED"] * 2, logs
    assert all(f"array task {i} of 2" in log for i, log in enumerate(logs)), logs
    assert sum("kept 3 of 8 clips" in log for log in logs) == 1, logs
    _same_result(out, one_rank)


def test_sources_as_a_file_list_and_as_shards(raw, one_rank, tmp_path):
    """A .txt list of paths reads the same clips as the folder; curated shards curate again unchanged."""
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p}\n" for p in sorted(raw.glob("*.mp4"))))
    proc = _curate(f"source={listing}", f"out={tmp_path / 'listed'}", *COMMON)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _same_result(tmp_path / "listed", one_rank)
    proc = _curate(
        f"source={one_rank / 'shards'}", f"out={tmp_path / 'again'}", *COMMON, "stages=[bounds,motion,dedup]"
    )
    assert proc.returncode == 0 and "kept 3 of 3 clips from 3 sources" in proc.stdout, proc.stdout + proc.stderr
    again = _shard_samples(tmp_path / "again")
    assert sorted(s["txt"] for s in again.values()) == sorted(s["txt"] for s in _shard_samples(one_rank).values())


def test_long_scenes_are_cut_into_windows_no_longer_than_the_limit():
    from opensora_lite.curate.clips import windows

    spans = windows([0, 100], 400, 30.0, 4.0)  # a 3.3-s scene, then a 10-s one
    assert spans == [(0, 100), (100, 200), (200, 300), (300, 400)]
    assert windows([0], 121, 30.0, 4.0) == [(0, 60), (60, 121)]  # 4.03 s: two windows, not one over the limit
    assert windows([0], 50, 30.0, 0) == [(0, 50)]


def test_a_source_kept_whole_keeps_its_container(tmp_path):
    """An .mkv kept whole is stored as <key>.mkv with its bytes untouched (a cut window would be mp4)."""
    import av

    src = tmp_path / "raw"
    src.mkdir()
    with av.open(str(src / "pan.mkv"), "w") as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for frame in _scene(11, N):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    (src / "pan.txt").write_text("a pan")
    proc = _curate(f"source={src}", f"out={tmp_path / 'out'}", "stages=[split,bounds,dedup]", "bounds.min_duration=1")
    assert proc.returncode == 0 and "kept 1 of 1 clips" in proc.stdout, proc.stdout + proc.stderr
    ((key, sample),) = _shard_samples(tmp_path / "out").items()
    assert set(sample) == {"mkv", "json", "txt"} and sample["mkv"] == (src / "pan.mkv").read_bytes()
