"""Mid-stage checkpoints, written synchronously or in the background (`stage.async_checkpoint`).

Either way a checkpoint is written into `checkpoints/.tmp-step_N/` and renamed into place only once
complete (checkpoint/stage.py), so a kill at any moment leaves the previous checkpoint the newest loadable
one. Synchronous: every rank writes its part, rank 0 publishes, training goes on. Asynchronous (engines
whose checkpoints are DCP folders: single, ddp, fsdp2): each rank copies its model and optimizer state to
host memory and DCP writes it from a background thread while training continues; rank 0 adds the trainer
state and EMA and publishes when the writes are complete (DCP's coordinator returns only after every
rank's files and the metadata are on disk). At most one checkpoint is in flight: the next one, the end of
the stage and a preemption first wait for it.

The time the trainer is held per checkpoint (the slowest rank's) is logged as `checkpoint_block_s`; for a
background write, the time until it was published follows as `checkpoint_write_s`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from opensora_lite.checkpoint.stage import StageCheckpoints
from opensora_lite.errors import CheckpointError

log = logging.getLogger("opensora_lite")


class _InFlight:
    """A checkpoint being written in the background: this rank's DCP writes, then (rank 0) the publish."""

    def __init__(self, step: int, futures: list[Future], publish: Callable[[], Any] | None):
        self.step, self.began = step, time.perf_counter()
        self.seconds = float("nan")
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="osl-checkpoint")
        self._done = self._pool.submit(self._finish, futures, publish)

    def _finish(self, futures: list[Future], publish: Callable[[], Any] | None) -> None:
        for future in futures:
            future.result()
        if publish is not None:
            publish()
        self.seconds = time.perf_counter() - self.began

    def done(self) -> bool:
        return self._done.done()

    def wait(self) -> float:
        """Block until written (and published); the seconds the write took."""
        try:
            self._done.result()
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"the background write of the step-{self.step} checkpoint failed: {first}") from exc
        finally:
            self._pool.shutdown(wait=True)
        return self.seconds


class CheckpointWriter:
    """Writes a stage's checkpoints; every rank calls save() and wait() at the same points."""

    def __init__(self, engine, stage_dir: StageCheckpoints, keep: int, asynchronous: bool, report, save_model=None):
        """`engine`: the stage's (parallel/engine.py: save_model, save_optimizer, save_async, collectives).
        `report(metrics, step)`: where the per-checkpoint timings go (the tracker, on rank 0).
        `save_model(folder, model)`: what writes the weights (default: the engine's full weights; a LoRA
        stage writes its adapters)."""
        self.engine, self.dir, self.keep = engine, stage_dir, keep
        self.save_model = save_model or engine.save_model
        self.asynchronous = asynchronous and engine.writes_async
        self.report = report
        self.in_flight: _InFlight | None = None

    def save(self, step: int, model, opt, ema, trainer_state: Callable[[], dict | None], companions=()) -> float:
        """Checkpoint `step`. `trainer_state()` is called on every rank (it may gather) and returns the state
        rank 0 writes. `companions`: models a task trains beside this one (train/tasks/companion.py), each
        written into the folder by every rank, synchronously. Returns the seconds this rank was held."""
        began = time.perf_counter()
        self.wait(step)
        engine = self.engine
        if engine.is_main:
            self.dir.prepare_checkpoint(step)
        engine.barrier()
        tmp = self.dir.checkpoint_tmp(step)
        futures = engine.save_async(tmp, model, opt) if self.asynchronous else None
        if futures is None:
            self.save_model(tmp, model)
            engine.save_optimizer(tmp, model, opt)
        for companion in companions:
            companion.save(tmp)
        ema_state = ema.state_dict() if ema else None
        state = trainer_state()
        if futures is None:
            if engine.is_main:
                log.info("checkpoint %s", self.dir.publish_checkpoint(step, state, ema_state, self.keep))
            engine.barrier()
        else:
            publish = None
            if engine.is_main:
                if ema_state is not None:  # training updates the shadow in place while the write runs
                    ema_state = {k: v.clone() for k, v in ema_state.items()}

                def publish(state=state, ema_state=ema_state) -> None:
                    path = self.dir.publish_checkpoint(step, state, ema_state, self.keep)
                    log.info("checkpoint %s (written beside training)", path)

            self.in_flight = _InFlight(step, futures, publish)
        held = time.perf_counter() - began
        slowest = engine.all_reduce_floats([held], "max")[0]
        self.report({"checkpoint_block_s": slowest, "checkpoint_step": step}, step)
        return held

    @property
    def writing(self) -> bool:
        """A background write is still running on this rank."""
        return self.in_flight is not None and not self.in_flight.done()

    def wait(self, step: int) -> None:
        """Finish the checkpoint in flight, if any (`step`: where training is now, for the log)."""
        if self.in_flight is None:
            return
        in_flight, self.in_flight = self.in_flight, None
        error = None
        try:
            seconds = in_flight.wait()
        except CheckpointError as exc:
            error = exc
        # every rank learns of a failure anywhere (and, after this, may rely on the published checkpoint)
        failed = self.engine.all_reduce_floats([float(error is not None)], "max")[0]
        if error is not None:
            raise error
        if failed:
            raise CheckpointError(
                f"the background write of the step-{in_flight.step} checkpoint failed on another rank"
            )
        self.report({"checkpoint_write_s": seconds, "checkpoint_step": in_flight.step}, step)
