"""Shared start-up of the Hydra entry points: compose -> typed config -> checks -> run directory."""

from __future__ import annotations

import functools
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Callable

import hydra
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from opensora_lite.config.load import config_dir, register, to_config
from opensora_lite.config.schema import Config
from opensora_lite.errors import Preempted, UserError
from opensora_lite.layout import SWEPT_KEYS_ENV, run_dir_for, swept_keys_in_argv  # noqa: F401 (run_dir_for: for the CLIs)

PREEMPTED_EXIT = 3  # stopped early on a signal after a checkpoint: rerunning resumes
INTERRUPTED_EXIT = 130  # stopped by Ctrl-C (128 + SIGINT, as shells report it): rerunning resumes


def hydra_entry(config_name: str, validate_on_print: bool = False) -> Callable:
    """hydra.main over this checkout's configs/, with the schema registered and user errors reported
    as a single line with exit status 2 (no traceback). With validate_on_print, `--cfg job` also runs
    the cross-field checks (Hydra prints the config without running the task)."""

    def decorate(fn: Callable[[DictConfig], None]) -> Callable[[], None]:
        @functools.wraps(fn)
        def task(cfg: DictConfig) -> None:
            try:
                fn(cfg)
            except UserError as exc:  # `rank`: raised once the ranks had started (train/curriculum.py)
                rank = getattr(exc, "rank", None)
                _fail(f"{f'rank {rank}: ' if rank else ''}error: {exc}", 2, every_rank=rank is not None)
            except MissingMandatoryValue as exc:
                key = exc.full_key or "?"
                _fail(f"error: {key}: a value is required (add {key}=...)", 2)
            except Preempted as exc:  # the checkpoint is written: requeue (Slurm) and stop
                from opensora_lite.parallel.engine import launch_env

                if exc.interrupted:  # Ctrl-C: the user's stop, never requeued
                    _say(f"interrupted: {exc}; to resume, rerun {resume_command()}", once=True)
                    sys.exit(INTERRUPTED_EXIT)
                if launch_env()[0] == 0:
                    from opensora_lite.train.preemption import requeue_slurm_job

                    requeue_slurm_job(exc)
                sys.exit(PREEMPTED_EXIT)
            except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
                _say(
                    "interrupted: stopped at once (Ctrl-C); a rerun resumes from the newest checkpoint "
                    f"written before it: {resume_command()}",
                    once=True,
                )
                sys.exit(INTERRUPTED_EXIT)
            except Exception as exc:
                lost = collective_failure(exc)
                if lost is None:
                    raise
                logging.getLogger("opensora_lite").debug("collective failure", exc_info=True)  # into train.log
                _fail(f"error: {lost}", 1, every_rank=True)

        def main() -> None:
            register()
            if validate_on_print and any(a in ("--cfg", "-c") for a in sys.argv[1:]):
                _validate_argv(config_name)
            shown = [b for a, b in zip(sys.argv[1:], sys.argv[2:]) if a in ("--cfg", "-c")]
            if shown and shown[0] in ("job", "all") and "--resolve" not in sys.argv:
                sys.argv.append("--resolve")  # values, not ${...} links (hydra's own part resolves only in a job)
            if any(a in ("--multirun", "-m") for a in sys.argv[1:]):  # for jobs that run elsewhere (Slurm)
                os.environ[SWEPT_KEYS_ENV] = ",".join(sorted(swept_keys_in_argv()))
            try:
                hydra.main(config_path=str(config_dir()), config_name=config_name, version_base="1.3")(task)()
            except KeyboardInterrupt:  # Ctrl-C while Hydra composes the config: nothing was written
                _say("interrupted (Ctrl-C) before anything was written", once=True)
                sys.exit(INTERRUPTED_EXIT)

        return main

    return decorate


def resume_command() -> str:
    """The command that resumes this job: this process's own command line, or the launcher's."""
    if "TORCHELASTIC_RUN_ID" in os.environ:  # a torchrun worker: its argv is not what the user typed
        return "the same torchrun command"
    program = Path(sys.argv[0]).name
    if not program.startswith("osl-"):  # python -m opensora_lite.cli.<entry>
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        program = f"python -m {spec.name}" if spec is not None else sys.argv[0]
    return " ".join([program, *map(shlex.quote, sys.argv[1:])])


def _say(message: str, once: bool = False) -> None:
    """One line on stderr in one write, so that several ranks' lines never merge. `once`: the same
    message on every rank, printed by rank 0 alone."""
    from opensora_lite.parallel.engine import launch_env

    rank = launch_env()[0]
    notes = os.environ.get("OSL_ERROR_DIR")  # set by osl-torchrun (cli/launch.py)
    if once and rank != 0:
        if notes:  # kept for the launcher: torchrun may stop rank 0 before it prints, if this rank exits first
            Path(notes, f"rank{rank}.txt").write_text(message.strip())
        return
    sys.stderr.flush()
    os.write(2, f"{message.strip()}\n".encode())
    if notes:
        Path(notes, f"printed.rank{rank}").touch()


class JobFailed(CompactHydraException):
    """A job run by submitit (a Slurm sweep) failed; raised, not exited, so submitit records the failure
    and the sweeping command reports it (one line, exit status 1) instead of waiting for a result."""


def _fail(message: str, status: int, every_rank: bool = False) -> None:
    """Report `message` and exit with `status`. Errors raised before the ranks started (config, data,
    start-up checks) are the same on every rank: rank 0 prints them, once. Later ones may be one rank's
    own (`every_rank`): each rank prints its own."""
    _say(message, once=not every_rank)
    if os.environ.get("SUBMITIT_EXECUTOR"):
        raise JobFailed(message) from None
    sys.exit(status)


def collective_failure(exc: BaseException) -> str | None:
    """A one-line report when exc is a failed collective (a peer died, hung past parallel.timeout_s, or
    the network broke), else None: the other processes then exit instead of waiting forever."""
    import torch.distributed as dist

    from opensora_lite.parallel.engine import launch_env

    rank, world, _ = launch_env()  # the process group itself may be gone by now (shut down on the way out)
    if world == 1:
        return None
    text = str(exc)
    markers = ("gloo", "NCCL", "Connection closed by peer", "Connection reset", "Timed out", "timed out")
    if not (isinstance(exc, dist.DistError) or (isinstance(exc, RuntimeError) and any(m in text for m in markers))):
        return None
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return (
        f"rank {rank} of {world}: a collective failed ({first[:300]}). Another process "
        "died or stopped responding for parallel.timeout_s; its own log has the cause"
    )


def _validate_argv(config_name: str) -> None:
    from hydra import compose, initialize_config_dir
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(sys.argv[1:])
    overrides = list(args.overrides)
    if args.config_dir:
        overrides.append(f"hydra.searchpath=[file://{Path(args.config_dir).resolve()}]")
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        try:
            cfg = compose(args.config_name or config_name, overrides=overrides)
        except Exception:
            return  # composition errors: let hydra.main report them in its usual way
    try:
        to_config(cfg)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


def load(cfg: DictConfig) -> tuple[Config, dict]:
    """Typed, validated config and its resolved plain-dict form (saved in the run directory)."""
    typed = to_config(cfg)
    return typed, OmegaConf.to_container(cfg, resolve=True)
