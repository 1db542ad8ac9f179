"""Bad input: one clear line on stderr, a non-zero exit, and nothing written."""

import os
import re
import subprocess

from conftest import BIN, REPO, cli, mini_overrides


def _fails_cleanly(out, run_root, expected: str):
    assert out.returncode == 2, out.stdout + out.stderr
    lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("error: ") and expected in lines[0], out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert not run_root.exists() or not any(run_root.iterdir()), "a failed start left files behind"


def test_missing_dataset_path(tmp_path):
    out = cli("osl-curriculum", *mini_overrides(tmp_path / "nowhere", tmp_path / "runs"))
    _fails_cleanly(out, tmp_path / "runs", "data.shards: no shards found")


def test_empty_shards(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        (data / f"empty-{i}.tar").write_bytes(b"")
    out = cli("osl-curriculum", *mini_overrides(data, tmp_path / "runs"))
    _fails_cleanly(out, tmp_path / "runs", "are empty or unreadable")


def test_stage_whose_previous_stage_has_no_checkpoint(shapes_dir, tmp_path):
    out = cli("osl-train", *mini_overrides(shapes_dir, tmp_path / "runs"), "run.stage=t2v")
    _fails_cleanly(out, tmp_path / "runs", "curriculum.stages.t2v.init: previous stage 'image' has no final checkpoint")


def test_stage_whose_init_path_is_missing(shapes_dir, tmp_path):
    out = cli(
        "osl-train",
        *mini_overrides(shapes_dir, tmp_path / "runs"),
        "run.stage=image",
        f"curriculum.stages.image.init={tmp_path / 'flux1-dev.safetensors'}",
    )
    _fails_cleanly(out, tmp_path / "runs", "curriculum.stages.image.init: no weights at")


def test_osl_train_needs_a_stage_name(shapes_dir, tmp_path):
    out = cli("osl-train", *mini_overrides(shapes_dir, tmp_path / "runs"))
    _fails_cleanly(out, tmp_path / "runs", "run.stage: osl-train runs one stage")


def test_sampling_a_missing_checkpoint(tmp_path):
    out = cli("osl-sample", f"checkpoint={tmp_path / 'nothing'}")
    _fails_cleanly(out, tmp_path / "nothing", "no weights at")


def test_an_error_under_torchrun_is_printed_once_and_the_launcher_adds_one_line(shapes_dir, tmp_path):
    """Two ranks under osl-torchrun (torchrun's arguments; slurm/stage_1node.sbatch uses it): an error every
    rank meets at start-up is printed once, whole, by rank 0, and the launcher sums the failure up in one
    line instead of torchrun's traceback and failure table."""
    cmd = [str(BIN / "osl-torchrun"), "--standalone", "--nproc-per-node=2", "-m", "opensora_lite.cli.train"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    out = subprocess.run(
        [*cmd, *mini_overrides(shapes_dir, tmp_path / "runs")], cwd=REPO, env=env, capture_output=True, text=True
    )
    said = out.stdout + out.stderr
    assert out.returncode == 2, said[-3000:]
    errors = [line for line in said.splitlines() if "run.stage: osl-train runs one stage" in line]
    assert len(errors) == 1 and errors[0].startswith("error: run.stage:"), said[-3000:]
    assert "Traceback" not in said and "ChildFailedError" not in said, said[-3000:]
    last = out.stderr.strip().splitlines()[-1]  # whichever rank torchrun saw exit first
    assert re.match(r"osl: rank [01] exited with status 2 ", last), said[-3000:]
    assert not (tmp_path / "runs").exists()


def test_the_launcher_prints_the_error_when_rank_0_was_stopped_before_it_could(tmp_path):
    """A shared start-up error that rank 1 meets first: torchrun stops rank 0 (here still asleep) before it
    prints, and the launcher prints the error rank 1 left for it, once, above its summary line."""
    script = tmp_path / "job.py"
    script.write_text(
        "import os, time\n"
        "from opensora_lite.cli.common import _fail\n"
        "if os.environ['RANK'] == '0':\n"
        "    time.sleep(60)\n"
        "_fail('error: data.shards: no shards in /nowhere', 2)\n"
    )
    cmd = [str(BIN / "osl-torchrun"), "--standalone", "--nproc-per-node=2", str(script)]
    out = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True)
    said = out.stdout + out.stderr
    assert out.returncode == 2, said[-3000:]
    lines = out.stderr.strip().splitlines()
    assert [line for line in lines if "no shards" in line] == ["error: data.shards: no shards in /nowhere"], said
    assert lines[-2] == "error: data.shards: no shards in /nowhere", said  # right above the summary
    assert re.match(r"osl: rank 1 exited with status 2 ", lines[-1]), said
    assert "Traceback" not in said, said[-3000:]
