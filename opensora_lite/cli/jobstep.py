"""The last command of the sbatch templates: run the job step (`srun ...`) and pass on the stop signals
that the batch script itself receives.

    exec .venv/bin/python -m opensora_lite.cli.jobstep srun ... -m opensora_lite.cli.curriculum ...

A signal for the job script would otherwise end the job badly: bash dies on USR1 (`scancel
--signal=USR1 --batch`, or `--full`), Slurm then kills the step before it can checkpoint, and the job
FAILS. Here USR1, USR2 and TERM that reach the batch shell are passed to every process of the job's
steps (`scancel --signal=SIG <job>`, which leaves the batch shell out) and lead to what the time
limit's `--signal=USR1@N` leads to: the training processes finish their step, write the checkpoint,
and rank 0 requeues the job (opensora_lite/train/preemption.py). This process keeps waiting for the
step and exits with its status. docs/cluster.md says which signal does what.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

FORWARDED = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)


def main(argv: list[str] | None = None) -> None:
    cmd = sys.argv[1:] if argv is None else argv
    if not cmd:
        sys.exit("usage: python -m opensora_lite.cli.jobstep srun [options] program [args]")
    step = subprocess.Popen(cmd)
    job = os.environ.get("SLURM_JOB_ID")

    def forward(signum: int, frame) -> None:
        name = signal.Signals(signum).name
        print(f"osl: batch shell got {name}: passing it to the job step", file=sys.stderr, flush=True)
        if job:  # every task of every step, wherever it runs (srun itself would end the step on TERM)
            subprocess.run(["scancel", f"--signal={name[3:]}", job], capture_output=True)
        else:
            step.send_signal(signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    status = step.wait()  # resumed after each handler (PEP 475)
    sys.exit(status if status >= 0 else 128 - status)


if __name__ == "__main__":
    main()
