"""torchrun for Slurm jobs (slurm/torchrun_multinode.sbatch): the same arguments, two differences.

- USR1 and USR2 are ignored by the agent. Slurm's `--signal=USR1@N` (USR2 from submitit, or either from
  `scancel --signal`) reaches every process of the job step; its default action would end the agent,
  and with it the training processes, before they checkpoint.
  The training processes install their own handler (opensora_lite/train/preemption.py).
- SIGTERM (the job step ending, e.g. after a requeue) stops the agent with one line instead of a
  traceback; the agent has already passed the signal on to the training processes.
"""

from __future__ import annotations

import signal
import sys


def main() -> None:
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(sys.argv[1:]))
    except SignalException as exc:
        print(f"osl: torchrun agent stopped by {exc.sigval.name}", file=sys.stderr, flush=True)
        sys.exit(128 + int(exc.sigval))


if __name__ == "__main__":
    main()
