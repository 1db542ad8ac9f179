"""The ddp engine under torchrun with 2 gloo processes: the curriculum runs and writes one result.
(Parity with a single-process reference is the distributed-engines work: tests/test_engines_*.)"""

import json
import socket
import subprocess

from conftest import BIN, REPO, mini_overrides


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_stage(shapes_dir, tmp_path):
    cmd = [
        str(BIN / "torchrun"),
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        "-m",
        "opensora_lite.cli.train",
        *mini_overrides(shapes_dir, tmp_path, name="ddp"),
        "parallel=ddp",
        "run.stage=image",
        "curriculum.stages.image.evaluate=false",
        "curriculum.stages.image.log_every=1",
    ]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "ddp"
    assert (run_dir / "image" / "final" / "model.safetensors").is_file()
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]  # rank 0 alone writes metrics
    assert "2 processes" in (run_dir / "logs" / "train.log").read_text()
