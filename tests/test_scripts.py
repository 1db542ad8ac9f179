"""The benchmark and GPU-check scripts run (tiny shapes, nothing appended): they stay ready to use.
No timing is asserted; the figures they print are checked for shape only. The GPU suite as a whole:
tests/test_gpu_suite.py."""

import os
import re
import subprocess
import sys

from conftest import REPO


def _script(name: str, *args: str, env: dict | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name.removesuffix('.py')}", *args, "--no-append"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_checkpoint_benchmark_runs():
    out = _script("bench_checkpoint.py", "--smoke")
    rows = dict(re.findall(r"\| (sync|async) \| ([0-9.]+) \|", out))
    assert rows.keys() == {"sync", "async"} and "steps trained during the write" in out


def test_step_time_and_checkpointing_benchmarks_run():
    out = _script("bench_flux_step.py", "--hidden", "64", "--heads", "2", "--grid", "1", "4", "4", "--rounds", "1")
    assert "| opensora_lite MMDiT |" in out and "| diffusers FluxTransformer2DModel |" in out
    assert float(re.search(r"max output difference ([0-9.e+-]+)", out).group(1)) <= 1e-5  # same function timed
    out = _script("bench_activation_checkpointing.py", "--hidden", "64", "--heads", "2", "--grid", "1", "4", "4")
    assert out.count("\n| ") == 6  # header + five settings


def test_lora_benchmark_runs():
    out = _script(
        "bench_lora.py", "--hidden", "64", "--heads", "2", "--text-dim", "32", "--vec-dim", "16", "--ranks", "4"
    )
    assert "| full |" in out and "| LoRA rank 4 |" in out


def test_gpu_engine_step_script_runs_in_smoke_mode():
    """Both engines the GPU measurement compares step through the engine interface (ColossalAI with the
    CPU shim of tests/colossalai_cpu)."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "tests" / "colossalai_cpu"))
    out = _script("gpu_engine_step.py", "--smoke", env=env)
    assert re.search(r"\| fsdp2 \| 0M \| [0-9.]+ \|", out) and re.search(
        r"\| colossalai_zero2 \| 0M \| [0-9.]+ \|", out
    )


def test_cache_benchmark_runs():
    out = _script("bench_cache.py", "--steps", "2", "--rounds", "1", "--clips", "32")
    assert re.search(r"\| video \| [0-9.]+ \|", out) and re.search(r"\| cached \| [0-9.]+ \|", out)


def test_tiny_dcae_benchmark_runs(shapes_dir, tmp_path):
    from test_tiny_dcae import _overrides

    overrides = [o for o in _overrides(shapes_dir, tmp_path) if not o.startswith("experiment=")]
    overrides += ["curriculum.stages.i2v.evaluate=false", "curriculum.stages.t2v.buckets={16px:{8:[1.0,4]}}"]
    options = ["--root", str(tmp_path), "--steps", "10", "--rounds", "1", "--threads", "1"]
    out = _script("bench_tiny_dcae.py", *options, *overrides)
    assert re.search(r"\| ae \| 6 \| [0-9]+ \| [0-9]+ \| psnr [0-9.]+, ssim -?[0-9.]+, latent_std [0-9.]+ \|", out), out
    assert re.search(r"\| Shapes DC-AE \(4x4x4, 8 ch\) \| 2 x 4 x 4 x 8 \| 32 \| [0-9.]+ \| [0-9.]+x \|", out), out
    assert re.search(r"\| pixel \(1x2x2, 12 ch\) \| 8 x 8 x 8 x 12 \| 512 \| [0-9.]+ \| 1.0x \|", out), out


def test_motion_score_benchmark_runs(motion_data, tmp_path):
    """bench_motion_score from ingested data to table, tiny: the 36 clips of `motion_data` (already written
    and ingested, so the benchmark's data step is skipped), 2 + 2 training steps, a sweep of 2 scores x 8
    prompts at 2 sampling steps."""
    clips, shards = motion_data
    options = ["--root", str(tmp_path), "--source", str(clips.parent), "--shards", str(shards), "--scores", "2", "5"]
    options += ["--samples", "1", "--num-steps", "2", "--threads", "1"]
    overrides = ["data.num_workers=0", "logger.progress_bar=false", "sample.num_steps=2"]
    for stage, frames, batch in (("image", 1, 8), ("t2v", 5, 4)):
        overrides += [
            f"curriculum.stages.{stage}.steps=2",
            f"curriculum.stages.{stage}.buckets={{16px:{{{frames}:[1.0,{batch}]}}}}",
        ]
    out = _script("bench_motion_score.py", *options, *overrides)
    assert re.search(r"\| 0 \| 2 5 \| 16 \| \*\*(-?[0-9.]+|nan)\*\* \|", out), out
    sweep = tmp_path / "tiny_motion_score_seed0" / "motion_sweep"
    assert len(list(sweep.glob("contact_sheet_*.png"))) == 8 and (sweep / "summary.json").exists()


def test_i2v_position_benchmark_runs(mini_run):
    """bench_i2v_position over the mini run's I2V stage, with a sample setting changed."""
    run_dir, _ = mini_run
    out = _script("bench_i2v_position.py", str(run_dir), "--set", "image_cfg_scale=2")
    number = r"[0-9.]+ / [0-9.]+ / [0-9.]+"
    row = rf"\| i2v \| 5f 16x16 \| all: \d+ of 6 \| ({number}|-) \| [0-9.]+ \| .* \| [0-9.]+ \| [0-9.]+ \|"
    assert re.search(row, out), out  # ... direction and colour keep last
    assert "`python -m benchmarks.bench_i2v_position " in out  # the entry names the module form
    assert "with image_cfg_scale=2" in out and "appended to" not in out
