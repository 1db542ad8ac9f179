"""Shared fixtures: a small real Shapes shard set, config composition, and a mini curriculum run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# Bitwise comparisons (resume, 2 ranks against 1, cache builds) need matrix products that do not depend on
# thread count or buffer alignment. MKL's default AVX-512 kernels do depend on both (measured on a
# Sapphire Rapids CPU: a 2-process cache build differed from one process by ~1e-6), so the suite asks for
# MKL's reproducible code path; set before torch loads MKL, inherited by every subprocess a test starts.
os.environ.setdefault("MKL_CBWR", "COMPATIBLE")

import pytest  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "0")
torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]


def both_flux_outputs(ours, ref, img, img_ids, txt, txt_ids, t, y, guidance=None):
    """(our output, diffusers' FluxTransformer2DModel output) for the same packed tokens and positions."""
    from benchmarks.flux_reference import diffusers_forward

    with torch.no_grad():
        got = ours.forward_tokens(img, img_ids, txt, txt_ids, t, y, guidance=guidance)
        return got, diffusers_forward(ref, img, img_ids, txt, txt_ids, t, y, guidance)


def tiny_mmdit(**changes):
    """A seconds-fast MMDiT config (48 wide, 2 + 2 blocks) for model-level tests, with changes."""
    from dataclasses import replace

    from opensora_lite.models.flux.model import MMDiTConfig

    base = MMDiTConfig(
        latent_channels=4,
        patch_size=[1, 2, 2],
        hidden_size=48,
        num_heads=2,
        depth=2,
        depth_single_blocks=2,
        axes_dim=[8, 8, 8],
        context_in_dim=16,
        vec_in_dim=8,
    )
    return replace(base, **changes)


BIN = Path(sys.executable).parent


@pytest.fixture
def single_process_env(monkeypatch):
    """A test that is the single process (its spawned ranks set their own environment)."""
    import torch.distributed as dist

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert not dist.is_initialized()


def free_port() -> int:
    """A port that was free a moment ago (another process may take it before it is bound: launch through
    on_a_free_port, or let torchrun pick its own with TORCHRUN's --standalone)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_clash(text: str) -> bool:
    return "EADDRINUSE" in text or "ddress already in use" in text


def on_a_free_port(launch, attempts: int = 3):
    """launch(port) for a port free a moment ago; launched again on a new port when it failed because
    something bound that port in between (rank 0's store reports EADDRINUSE). launch either raises (a
    spawned rank's error) or returns a CompletedProcess whose output is checked."""
    for attempt in range(1, attempts + 1):
        try:
            result = launch(free_port())
        except Exception as exc:  # noqa: BLE001 -- re-raised unless it is a port clash
            if attempt < attempts and _port_clash(str(exc)):
                continue
            raise
        failed = isinstance(result, subprocess.CompletedProcess) and result.returncode != 0
        if failed and attempt < attempts and _port_clash(f"{result.stdout}{result.stderr}"):
            continue
        return result


# torchrun binds its own rendezvous store on a port the system picks (no port chosen beforehand to lose)
TORCHRUN = [str(BIN / "torchrun"), "--standalone"]


def spawn_ranks(fn, args: tuple, nprocs: int = 2) -> None:
    """fn(rank, port, *args) on nprocs spawned processes, retried on a port clash (on_a_free_port)."""
    import torch.multiprocessing as mp

    on_a_free_port(lambda port: mp.start_processes(fn, args=(port, *args), nprocs=nprocs, start_method="spawn"))


def in_process_group(rank: int, port: int, body) -> None:
    """body() on a spawned rank inside a 2-rank gloo group, left as Engine.shutdown leaves it: after a clean
    body the ranks meet first (a rank that tears its connections down while its peer still uses them can
    abort the peer at exit, "terminate called without an active exception", seen on test_export's FSDP2 save),
    then every group is destroyed and what held one (a device mesh, sharded tensors) is collected; after a
    failure there is no peer to meet."""
    import gc

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        body()
    except BaseException:
        dist.destroy_process_group()
        raise
    dist.barrier()
    dist.destroy_process_group()
    gc.collect()


def _spawned(rank: int, port: int, main, out: str, args: tuple) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    result = main(*args)
    if rank == 0:
        Path(out).write_text(json.dumps(result))


def two_ranks(main, tmp_path: Path, *args):
    """main(*args) on 2 spawned processes (torchrun's environment, a free port); rank 0's result (JSON)."""
    import uuid

    out = tmp_path / f"result-{uuid.uuid4().hex[:8]}.json"
    spawn_ranks(_spawned, (main, str(out), args))
    return json.loads(out.read_text())


def compose(overrides: list[str] | None = None, config_name: str = "config"):
    """The composed (untyped) config, as the CLIs see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from opensora_lite.config.load import config_dir, register

    register()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose(config_name, overrides=overrides or [])


def typed(overrides: list[str] | None = None):
    from opensora_lite.config.load import to_config

    return to_config(compose(overrides))


@pytest.fixture(autouse=True)
def _jobs_own_their_wandb_service():
    """A run logged to W&B inside the test process starts a W&B service and exports WANDB_SERVICE; every job
    a later test starts as a user would (a subprocess) would then share that one service, and a job killed
    there leaves its run ID open in it, so its rerun fails ("run ID ... is in use"). A user's jobs each own
    their service (it ends with them); after each test the tests' jobs do too."""
    yield
    os.environ.pop("WANDB_SERVICE", None)


def cli(
    *args: str, cwd: Path | None = None, timeout: int = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run an installed console script (osl-train, osl-curriculum, ...) as a user would (`env`: extra
    environment variables)."""
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]],
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """Real mp4 clips in real tar shards: 96 Shapes clips in 4 shards (a few seconds to build)."""
    from opensora_lite.data.synthetic import ShapesConfig, write_shapes_shards

    out = tmp_path_factory.mktemp("shapes")
    write_shapes_shards(out, ShapesConfig(num_clips=96, clips_per_shard=24, seed=3), progress=False)
    return out


@pytest.fixture(scope="session")
def av_clips(tmp_path_factory) -> Path:
    """Shapes with sound, half of them bouncing: 12 clips of 32 x 32 at 8 fps in two shards."""
    from opensora_lite.data.synthetic import ShapesConfig, write_shapes_shards

    out = tmp_path_factory.mktemp("av_clips")
    cfg = ShapesConfig(num_clips=12, clips_per_shard=6, seed=5, bounce=0.5, sound=True, fps=[8.0])
    cfg.sizes, cfg.min_seconds = [[32, 32]], 1.5
    write_shapes_shards(out, cfg, progress=False)
    return out


@pytest.fixture(scope="session")
def motion_data(tmp_path_factory) -> tuple[Path, Path]:
    """shapes=motion written by `osl-data` (36 clips, red and blue, at the six speeds; each also as plain
    files under <out>/clips, as shapes=motion sets shapes.files) and those files ingested as `osl-data
    kind=videos` does (VMAF motion measured): (clips folder, shards folder). Shared by the motion-score
    tests and the motion-score benchmark's smoke run."""
    from opensora_lite.data.ingest import list_folder, write_shards

    root = tmp_path_factory.mktemp("motion")
    clips, shards = root / "src" / "clips", root / "shards"
    args = ["shapes=motion", f"out={clips.parent}", "shapes.num_clips=36", "shapes.colours=[red,blue]"]
    proc = cli("osl-data", *args)
    assert proc.returncode == 0 and "wrote 36 clips" in proc.stdout, proc.stderr
    report = write_shards(list_folder(clips), shards, 64, workers=1, progress=False)
    assert report.written == 36 and not report.skipped
    return clips, shards


def mini_overrides(data: Path, run_root: Path, name: str = "mini") -> list[str]:
    """The tiny curriculum cut to three short stages (image -> t2v -> i2v): a run takes seconds."""
    return [
        f"data.shards={data}",
        "data.aspect_ratios=[0.75,1.0,1.3333]",  # shapes_dir's clips come in three aspect ratios
        f"run.root={run_root}",
        f"run.name={name}",
        "data.num_workers=0",
        "~curriculum.stages.hires",
        "curriculum.stages.image.steps=4",
        "curriculum.stages.image.buckets={16px:{1:[1.0,8]}}",
        "curriculum.stages.image.checkpoint_every=2",
        "curriculum.stages.t2v.steps=3",
        "curriculum.stages.t2v.buckets={16px:{5:[1.0,4]}}",
        "curriculum.stages.t2v.log_every=1",
        "curriculum.stages.i2v.steps=2",
        "curriculum.stages.i2v.buckets={16px:{5:[1.0,4]}}",
        "eval.repeats=1",
        "eval.i2v_clips=6",
        "sample.num_steps=2",
        "logger.progress_bar=false",
    ]


@pytest.fixture(scope="session")
def mini_run(shapes_dir, tmp_path_factory):
    """One mini curriculum run shared by the tests that inspect its outputs."""
    from opensora_lite.cli.curriculum import run

    root = tmp_path_factory.mktemp("runs")
    results = run(compose([*mini_overrides(shapes_dir, root), "run.peak_tflops=0.002"]))
    return root / "mini", results
