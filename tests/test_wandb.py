"""W&B in offline mode: what the trainer logged is read back from the files W&B wrote."""

import json

from conftest import compose, mini_overrides
from wandb_records import read_run

from opensora_lite.cli.curriculum import run


def test_metrics_config_samples_and_resume_land_in_one_wandb_run(shapes_dir, tmp_path):
    overrides = mini_overrides(shapes_dir, tmp_path, name="wb") + [
        "logger=wandb",
        "logger.wandb.mode=offline",
        "logger.progress_bar=false",
        "curriculum.stages.image.log_every=1",
        "run.peak_tflops=0.002",
    ]
    run(compose(overrides + ["run.stage=image"]))
    run(compose(overrides + ["run.stage=t2v"]))  # a second job on the same run directory
    run_dir = tmp_path / "wb"
    run_id = (run_dir / "wandb_id.txt").read_text().strip()
    files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2 and all(f.name == f"run-{run_id}.wandb" for f in files)  # resumed, same id
    first, second = read_run(files[0]), read_run(files[1])
    assert first["id"] == second["id"] == run_id
    assert first["config"]["model"]["hidden_size"] == 128  # the resolved config
    steps = [h for h in first["history"] if "loss" in h]
    assert [h["_step"] for h in steps] == [1, 2, 3, 4]
    for key in ("loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s", "mfu", "host_rss_gib"):
        assert all(isinstance(h[key], float) and h[key] > 0 for h in steps), key
    assert all(0 <= h["data_stall_frac"] < 1 and h["data_wait_s"] >= 0 for h in steps)
    assert all(0.05 < h["host_rss_gib"] < 24 for h in steps)  # this process's resident memory, in GiB
    # stage boundaries and the layout; stage_start and layout share step 0, and W&B may merge them into one
    # history row with its keys in its own order (seen in a fresh-clone run): order by step, not within one
    events = [(h["_step"], k) for h in first["history"] for k in sorted(h) if k.startswith("event/")]
    assert sorted(events) == [(0, "event/layout"), (0, "event/stage_start"), (4, "event/stage_end")]
    videos = [h for h in first["history"] if h.get("image/samples/_type") == "videos"]  # sample mp4s
    assert len(videos) == 1 and videos[0]["image/samples/count"] == 8
    sheets = [h for h in first["history"] if h.get("image/contact_sheet_t2v/_type") == "image-file"]
    assert len(sheets) == 1 and sheets[0]["image/contact_sheet_t2v/format"] == "png"  # the stage's picture
    assert (run_dir / "image" / "contact_sheet_t2v.png").is_file()
    assert "image/colour_acc" in first["summary"]  # stage-end figures
    later = [h["_step"] for h in second["history"] if "loss" in h]
    assert later == [5, 6, 7]  # t2v continues the global step after image's 4
    assert "t2v/direction_acc" in second["summary"]
    assert any(h.get("t2v/contact_sheet_t2v/_type") == "image-file" for h in second["history"])
    summary = json.loads((run_dir / "t2v" / "final" / "summary.json").read_text())
    confusion = summary["metrics"]["direction_confusion"]  # prompt x read, "static" apart
    assert set(confusion) == {"left", "right", "up", "down"}
    assert all(set(row) == {"left", "right", "up", "down", "static"} for row in confusion.values())
    assert sum(sum(row.values()) for row in confusion.values()) == summary["metrics"]["num_clips"] == 24
