"""Preemption: a signal becomes a checkpoint at the next step boundary, then a requeue.

Slurm warns a job before its time limit with `--signal=USR1@<seconds>` (USR2 in a submitit sweep,
configs/hydra/launcher/slurm.yaml) and preempts with SIGTERM
(then SIGKILL after KillWait). Each rank notes the signal in its handler (nothing else happens inside
a handler); after every optimizer step the ranks agree (one max all-reduce of a flag) whether any of
them was signalled, so all of them stop at the same step. The trainer then writes a checkpoint and
raises `Preempted`; the entry point requeues the Slurm job (rank 0, `scontrol requeue`) and exits.
The requeued job resumes from that checkpoint, into the same run directory and W&B run.

A SIGTERM from `scancel` is told apart from a preemption by the job's state: a cancelled job is
checkpointed but not requeued; one that Slurm is requeuing itself (`scontrol requeue`) is left to it.
Loader workers ignore these signals (data/loader.py), so the main process alone acts on them.

Ctrl-C (SIGINT) is a stop too: the step in hand finishes, a checkpoint is written and the entry point
exits with status 130 and the command that resumes (never requeued). A second Ctrl-C stops at once,
keeping only the newest checkpoint already written. One press reaches a process more than once when a
launcher passes it on (torchrun's agent sends its own SIGINT after the terminal's), so repeats within
`REPEAT_S` count as the same press.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import torch
import torch.distributed as dist

from opensora_lite.errors import INTERRUPT, Preempted

log = logging.getLogger("opensora_lite")
# USR2: what submitit asks Slurm for (Slurm sweeps); INT last: where ranks saw different signals, a
# user's Ctrl-C wins (a stop, not a requeue)
SIGNALS = ("SIGUSR1", "SIGUSR2", "SIGTERM", "SIGINT")
REPEAT_S = 1.0  # a second SIGINT sooner than this is the same press, passed on by a launcher


class PreemptionWatch:
    """Installs the handlers (main thread only) and answers, collectively, whether to stop now."""

    def __init__(self, signals=SIGNALS):
        self.received: str | None = None
        self._interrupted_at: float | None = None
        self._previous = {}
        for name in signals:
            sig = getattr(signal, name)
            try:
                self._previous[sig] = signal.signal(sig, self._note)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def _note(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if name == INTERRUPT:
            now = time.monotonic()
            if self._interrupted_at is None:
                self._interrupted_at = now
                if os.environ.get("RANK", "0") == "0":  # os.write: safe inside a handler, one line
                    os.write(2, b"Ctrl-C: stopping after this step with a checkpoint (Ctrl-C again: stop at once)\n")
            elif now - self._interrupted_at > REPEAT_S:
                raise KeyboardInterrupt  # the second press: stop now, without a checkpoint
        if self.received is None or SIGNALS.index(name) > SIGNALS.index(self.received):
            self.received = name

    def should_stop(self, world_size: int, device: torch.device) -> str | None:
        """The signal some rank received (the same answer on every rank), else None."""
        code = SIGNALS.index(self.received) + 1 if self.received in SIGNALS else 0
        if world_size > 1 and dist.is_initialized():
            flag = torch.tensor([code], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            code = int(flag.item())
        return SIGNALS[code - 1] if code else None

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def requeue_slurm_job(exc: Preempted) -> None:
    """Requeue this Slurm job (call on one rank) and say so on stderr. The line is written before the
    request: `scontrol requeue` ends the job's processes, this one included, within moments.

    What the job's record says decides: a RUNNING job is requeued; a job Slurm has requeued already
    (`scontrol requeue`, or a preemption that requeued it: its restart count went up) is left to
    Slurm; a cancelled, timed-out or otherwise ending job is not requeued."""

    def say(what: str) -> None:
        print(f"preempted: {exc}; {what}", file=sys.stderr, flush=True)

    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return say("not a Slurm job: not requeued (rerun the same command to resume)")
    record = job_record(job)
    state, restarts = record.get("JobState", "?"), record.get("Restarts", "0")
    if restarts.isdigit() and int(restarts) > int(os.environ.get("SLURM_RESTART_COUNT") or 0):
        return say(f"job {job} is already requeued by Slurm (restart {restarts})")
    if state != "RUNNING":
        return say(f"job {job} is {state}: not requeued")
    say(f"requeueing job {job}")
    out = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if out.returncode != 0:
        say(f"scontrol requeue {job} failed: {out.stderr.strip()}")


def job_record(job: str) -> dict[str, str]:
    """`scontrol show job`'s fields (empty when scontrol is missing or the job unknown)."""
    try:
        text = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True).stdout
    except OSError:
        return {}
    return dict(part.split("=", 1) for part in text.split() if "=" in part)
