"""`osl-torchrun`: torchrun with the same arguments and three differences (slurm/*.sbatch use it).

- USR1 and USR2 are ignored by the agent. Slurm's `--signal=USR1@N` (USR2 from submitit, or either from
  `scancel --signal`) reaches every process of the job step; its default action would end the agent,
  and with it the training processes, before they checkpoint.
  The training processes install their own handler (opensora_lite/train/preemption.py).
- SIGTERM (the job step ending, e.g. after a requeue) stops the agent with one line instead of a
  traceback; the agent has already passed the signal on to the training processes.
- A training process that fails is summed up in one line (which rank, its exit status) instead of
  torchrun's traceback and failure table: the process printed its own error already (once, by rank 0,
  for errors every rank shares: opensora_lite/cli/common.py). When another rank exited first and
  torchrun stopped rank 0 before it printed, the launcher prints the error the failed rank left in
  OSL_ERROR_DIR, so the line above the summary is always the error.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path


def main() -> None:
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    notes = Path(tempfile.mkdtemp(prefix="osl-errors-"))
    os.environ["OSL_ERROR_DIR"] = str(notes)  # the training processes inherit it
    try:
        _run(notes)
    finally:
        shutil.rmtree(notes, ignore_errors=True)


def _run(notes: Path) -> None:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    try:
        run(parse_args(sys.argv[1:]))
    except SignalException as exc:
        print(f"osl: torchrun agent stopped by {exc.sigval.name}", file=sys.stderr, flush=True)
        sys.exit(128 + int(exc.sigval))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode
        how = f"exited with status {code}" if code >= 0 else f"was killed by {signal.Signals(-code).name}"
        others = len(exc.failures) - 1
        kept = notes / f"rank{rank}.txt"
        if not any(notes.glob("printed.rank*")) and kept.exists():  # nobody printed it: say it here
            print(kept.read_text(), file=sys.stderr, flush=True)
        also = f" ({others} other process{'es' if others > 1 else ''} failed after it)" if others else ""
        print(f"osl: rank {rank} {how}{also}; its error is printed above", file=sys.stderr, flush=True)
        sys.exit(code if code > 0 else 128 - code)


if __name__ == "__main__":
    main()
