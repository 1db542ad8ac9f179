"""The latent cache: precomputed inputs are bitwise what on-the-fly encoding gives for the same crop; the
precompute splits over 2 real processes into the same cache one process writes, and resumes; training
from the cache is the tiny curriculum's one-switch alternative (`data=cached`)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import TORCHRUN, compose, mini_overrides, typed
from safetensors.torch import load as load_tensors

from opensora_lite.autoencoders import build_autoencoder
from opensora_lite.data.cache import CachedStream, bucket_table, build_cache, cached_shards, stage_seed
from opensora_lite.data.loader import BucketedVideoStream, expand_shards, frames_on_device
from opensora_lite.diffusion.conditioning import uses_image_condition
from opensora_lite.parallel import build_engine
from opensora_lite.text.encoders import TextEncoders


def _config(shapes_dir, tmp_path, cache_dir):
    return typed([*mini_overrides(shapes_dir, tmp_path), "data=cached", f"data.cache_dir={cache_dir}"])


def _read(folder: Path) -> dict[str, tuple[dict, dict]]:
    """key -> (json record, tensors) of every cached sample."""
    out = {}
    for shard in cached_shards(folder):
        with tarfile.open(shard) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in files:
            if name.endswith(".json"):
                key = name[: -len(".json")]
                out[key] = (json.loads(files[name]), load_tensors(files[key + ".inputs.safetensors"]))
    return out


@pytest.fixture(scope="module")
def encoders():
    cfg = typed([])
    return build_autoencoder(cfg.autoencoder), TextEncoders(cfg.text_encoder)


@pytest.mark.parametrize("stage", ["t2v", "i2v"])
def test_cached_inputs_are_bitwise_the_on_the_fly_inputs(shapes_dir, tmp_path, encoders, stage):
    """For every sample, the cache holds the crop's latent (and, for I2V, its first/last-frame latents) and
    the caption's T5/CLIP outputs exactly as the trainer's own encoders give them for that crop (batch 1)."""
    cfg = _config(shapes_dir, tmp_path, tmp_path / "cache")
    ae, text = encoders
    engine = build_engine(cfg.parallel, "cpu")
    condition = uses_image_condition(cfg.curriculum.stages[stage].tasks)
    folder = build_cache(cfg, stage, condition, ae, text, engine, progress=False)
    cached = _read(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["samples"] == len(cached) > 0 and manifest["image_condition"] == condition

    index = list(cfg.curriculum.stages).index(stage)
    stream = BucketedVideoStream(
        expand_shards(cfg.data.shards), bucket_table(cfg, cfg.curriculum.stages[stage]), cfg.data.target_fps,
        seed=stage_seed(cfg, index), caption_template=cfg.data.caption_template,
    )  # fmt: skip
    seen = 0
    for url in stream.urls:
        for item in stream.items(url, 0, Counter()):
            meta, tensors = cached[item.key]
            assert (meta["resolution"], meta["num_frames"], meta["height"], meta["width"]) == (
                item.bucket.resolution, item.bucket.num_frames, item.bucket.height, item.bucket.width,
            )  # fmt: skip
            video = frames_on_device(BucketedVideoStream.collate([item], Counter(), [])["video"], "cpu")
            t5, clip = text.encode([item.caption])
            assert torch.equal(tensors["x0"].float(), ae.encode(video)[0])
            assert torch.equal(tensors["t5"].float(), t5[0]) and torch.equal(tensors["clip"].float(), clip[0])
            if condition:
                assert torch.equal(tensors["head"], ae.encode(video[:, :, :1])[0])
                assert torch.equal(tensors["tail"], ae.encode(video[:, :, -1:])[0])
            else:
                assert "head" not in tensors
            seen += 1
    assert seen == len(cached)
    # a second request finds the complete cache and reuses it
    assert build_cache(cfg, stage, condition, ae, text, engine, progress=False) == folder


def test_precompute_over_two_processes_equals_one_and_resumes(shapes_dir, tmp_path, encoders):
    import subprocess

    cfg = _config(shapes_dir, tmp_path, tmp_path / "one")
    ae, text = encoders
    engine = build_engine(cfg.parallel, "cpu")
    one = build_cache(cfg, "t2v", False, ae, text, engine, progress=False)

    overrides = [*mini_overrides(shapes_dir, tmp_path), "data=cached", f"data.cache_dir={tmp_path / 'two'}"]
    cmd = [
        *TORCHRUN,
        "--nproc-per-node=2",
        "-m",
        "opensora_lite.cli.cache",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [*cmd, *overrides, "parallel=ddp", "run.stage=t2v"], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    two = tmp_path / "two" / one.name  # same fingerprint: the engine is not part of what the inputs depend on
    assert f"t2v: {two}" in out.stdout
    a, b = _read(one), _read(two)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k][1][n], b[k][1][n]) for k in a for n in a[k][1])

    # resumable: a lost shard (and no manifest) is rebuilt alone, the finished ones are kept as they are
    shards = sorted(two.glob("[0-9]*.tar"))
    before = {p.name: p.stat().st_mtime_ns for p in shards}
    shards[1].unlink()
    (two / "manifest.json").unlink()
    cfg2 = typed(overrides)
    build_cache(cfg2, "t2v", False, ae, text, engine, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in sorted(two.glob("[0-9]*.tar"))}
    assert after.keys() == before.keys()
    assert [n for n in after if after[n] != before[n]] == [shards[1].name]
    assert _read(two).keys() == a.keys()


def test_a_damaged_cached_sample_is_a_counted_skip(shapes_dir, tmp_path, encoders):
    cfg = _config(shapes_dir, tmp_path, tmp_path / "cache")
    ae, text = encoders
    folder = build_cache(cfg, "t2v", False, ae, text, build_engine(cfg.parallel, "cpu"), progress=False)
    shard = cached_shards(folder)[0]
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    blobs = [i for i, (m, _) in enumerate(members) if m.name.endswith(".inputs.safetensors")]
    target = blobs[2]  # the third sample's tensors
    damaged = tmp_path / "damaged.tar"
    with tarfile.open(damaged, "w") as tar:
        for i, (m, data) in enumerate(members):
            if i == target:
                data = data[:40]  # truncated blob
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    stream = CachedStream([str(damaged)], bucket_table(cfg, cfg.curriculum.stages["t2v"]), 8.0, seed=0)
    it = iter(stream)
    first_epoch = [next(it) for _ in range((len(members) // 2 - 1) // 4)]  # the full batches of 23 samples
    assert all(b["x0"].shape[0] == 4 and b["t5"].shape[0] == 4 for b in first_epoch)
    assert sum(b["skipped"].get("corrupt_cache", 0) for b in first_epoch) == 1
    bad = members[target][0].name.split(".")[0]
    assert bad not in {k for b in first_epoch for k in b["keys"]}


def test_the_mini_curriculum_trains_the_same_from_the_cache(shapes_dir, mini_run, tmp_path):
    """One switch (`data=cached`): every stage builds its cache, then trains on the same batches as the
    on-the-fly run (the first epoch of the video stream is what the cache holds, in the same order), so
    the loss trajectory is the same (bitwise on these machines; 1e-6 allows for batch-size-dependent
    rounding of real encoders) and the stages evaluate and hand on their weights as usual."""
    from conftest import compose

    from opensora_lite.cli.curriculum import run

    video_dir, _ = mini_run
    run(compose([*mini_overrides(shapes_dir, tmp_path), "data=cached", f"data.cache_dir={tmp_path / 'cache'}"]))

    def losses(run_dir):
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return [(r["stage"], r["step"], r["loss"]) for r in rows if "loss" in r and "event" not in r]

    a, b = losses(video_dir), losses(tmp_path / "mini")
    assert [x[:2] for x in a] == [x[:2] for x in b] and len(a) >= 5
    assert [x[2] for x in b] == pytest.approx([x[2] for x in a], rel=1e-6)
    caches = sorted(p.name.split("-")[0] for p in (tmp_path / "cache").iterdir())
    assert caches == ["i2v", "image", "t2v"]
    summary = json.loads((tmp_path / "mini" / "i2v" / "final" / "summary.json").read_text())
    assert "i2v_colour_keep" in summary["metrics"]


def test_a_stop_signal_ends_the_precompute_after_the_shard_in_hand_and_a_rerun_finishes(shapes_dir, tmp_path, encoders):
    """USR1 (or TERM) while the cache is built, as in a preempted job: the shard being encoded is finished
    and kept, the build stops with `Preempted` (the entry point exits 3 and requeues), and the next build
    encodes only the missing shards into the cache one uninterrupted build writes."""
    import signal

    from opensora_lite.train.preemption import Preempted, PreemptionWatch

    cfg = _config(shapes_dir, tmp_path, tmp_path / "cache")
    ae, text = encoders
    engine = build_engine(cfg.parallel, "cpu")
    watch = PreemptionWatch()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)  # delivered to this process's handler, as Slurm's would be
        with pytest.raises(Preempted, match=r"t2v: stopped .* on SIGUSR1, latent cache: 1 of 4 shards"):
            build_cache(cfg, "t2v", False, ae, text, engine, progress=False, watch=watch)
    finally:
        watch.restore()
    (folder,) = (tmp_path / "cache").iterdir()
    first = sorted(folder.glob("[0-9]*.tar"))
    assert len(first) == 1 and not (folder / "manifest.json").exists()
    kept = first[0].stat().st_mtime_ns
    assert build_cache(cfg, "t2v", False, ae, text, engine, progress=False) == folder
    assert first[0].stat().st_mtime_ns == kept and len(cached_shards(folder)) == 4
    straight = build_cache(_config(shapes_dir, tmp_path, tmp_path / "straight"), "t2v", False, ae, text, engine)
    a, b = _read(folder), _read(straight)
    assert a.keys() == b.keys() and all(torch.equal(a[k][1]["x0"], b[k][1]["x0"]) for k in a)


@pytest.fixture(scope="module")
def few_clips(tmp_path_factory) -> Path:
    """Six Shapes clips in two shards: enough for a cache of every autoencoder in seconds."""
    from opensora_lite.data.synthetic import ShapesConfig, write_shapes_shards

    out = tmp_path_factory.mktemp("few_shapes")
    write_shapes_shards(out, ShapesConfig(num_clips=6, clips_per_shard=3, seed=5, min_seconds=1.5), progress=False)
    return out


# the new autoencoders -> a frame count each takes (DC-AE: 1 or 4k; Wan 2.2, HunyuanVideo-1.5: 4k+1; LTX: 8k+1)
NEW_AUTOENCODERS = {"dc_ae_tiny": 4, "wan22": 5, "hunyuan15": 5, "ltx": 9}


@pytest.mark.parametrize("name", list(NEW_AUTOENCODERS))
def test_osl_cache_and_cached_training_work_with_every_new_autoencoder(few_clips, tmp_path, name):
    """osl-cache with autoencoder=<name> (a tiny model of its family) stores each crop's latent bitwise as
    that autoencoder encodes it (its own channels, frame rule and scaling), and data=cached then trains on
    that cache, found by its fingerprint, without building it again. Other weights at the same path
    are another fingerprint."""
    from tiny_vaes import tiny_vae_folder

    from opensora_lite.cli.cache import run as cache_run
    from opensora_lite.cli.curriculum import run as train_run
    from opensora_lite.config.load import to_config
    from opensora_lite.config.stages import load_autoencoder
    from opensora_lite.data.cache import cache_folder, item_generator

    frames = NEW_AUTOENCODERS[name]
    ae = load_autoencoder(name, "autoencoder")
    overrides = [f"autoencoder={name}"]
    if name != "dc_ae_tiny":
        vae, ae = tiny_vae_folder(name, tmp_path / "vae")
        overrides += [f"autoencoder.{k}={getattr(ae, k)}" for k in ("path", "dtype", "tiling", "latent_channels")]
    overrides += [
        *mini_overrides(few_clips, tmp_path),
        "~curriculum.stages.image",  # the t2v stage alone, in this autoencoder's latent space
        "~curriculum.stages.i2v",
        "data=cached",
        f"data.cache_dir={tmp_path / 'cache'}",
        "run.stage=t2v",
        f"model.latent_channels={ae.latent_channels}",
        f"model.patch_size=[{','.join(map(str, ae.patch_size))}]",
        "curriculum.stages.t2v.init=none",
        "curriculum.stages.t2v.steps=1",
        "curriculum.stages.t2v.evaluate=false",
    ]
    composed = compose(overrides)
    composed.curriculum.stages.t2v.buckets = {"32px": {frames: [1.0, 2]}}  # replaced: no other frame count
    (folder,) = cache_run(composed.copy())
    built = (folder / "manifest.json").stat().st_mtime_ns

    cfg = to_config(composed.copy())
    ae = build_autoencoder(cfg.autoencoder)
    cached, seed = _read(folder), stage_seed(cfg, list(cfg.curriculum.stages).index("t2v"))
    stream = BucketedVideoStream(
        expand_shards(cfg.data.shards), bucket_table(cfg, cfg.curriculum.stages["t2v"]), cfg.data.target_fps,
        seed=seed, caption_template=cfg.data.caption_template,
    )  # fmt: skip
    seen = 0
    for url in stream.urls:
        for item in stream.items(url, 0, Counter()):
            video = frames_on_device(BucketedVideoStream.collate([item], Counter(), [])["video"], "cpu")
            x0 = cached[item.key][1]["x0"]
            assert x0.shape[:2] == (cfg.autoencoder.latent_channels, ae.latent_frames(frames))
            assert torch.equal(x0, ae.encode(video, generator=item_generator(seed, item.key))[0])
            seen += 1
    assert seen == len(cached) > 0

    train_run(composed.copy())
    rows = [json.loads(line) for line in (tmp_path / "mini" / "metrics.jsonl").read_text().splitlines()]
    assert any(torch.isfinite(torch.tensor(r["loss"])) for r in rows if "loss" in r)
    assert (folder / "manifest.json").stat().st_mtime_ns == built  # read, not rebuilt
    if name != "dc_ae_tiny":  # other weights saved over these (a fine-tuned VAE): another cache
        torch.manual_seed(1)
        type(vae).from_config(vae.config).save_pretrained(tmp_path / "vae")
        assert cache_folder(cfg, "t2v", False)[0] != folder
