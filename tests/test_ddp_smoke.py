"""The ddp engine under torchrun with 2 gloo processes, started by slurm/stage_1node.sbatch (run by
bash on this node, as a Slurm node would run it): the stage runs and writes one result.
(Loss parity with a single-process reference belongs to the distributed-engines work, issue 5.)"""

import json
import os
import socket
import subprocess

from conftest import BIN, REPO, mini_overrides


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_stage(shapes_dir, tmp_path):
    cmd = [
        "bash",
        str(REPO / "slurm" / "stage_1node.sbatch"),
        *mini_overrides(shapes_dir, tmp_path, name="ddp"),
        "parallel=ddp",
        "run.stage=image",
        "curriculum.stages.image.evaluate=false",
        "curriculum.stages.image.log_every=1",
    ]
    env = dict(os.environ, SLURM_SUBMIT_DIR=str(REPO), SLURM_GPUS_ON_NODE="2", MASTER_PORT=str(_free_port()))
    env["OSL_VENV"] = str(BIN.parent)  # the environment running these tests
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "ddp"
    assert (run_dir / "image" / "final" / "model.safetensors").is_file()
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]  # rank 0 alone writes metrics
    assert "2 processes" in (run_dir / "logs" / "train.log").read_text()
