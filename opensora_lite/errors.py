"""Errors a user can fix (the CLIs print them as one line and exit with status 2), and `Preempted`, the
stop a signal asks for. A leaf: it imports nothing of the framework."""


class UserError(Exception):
    """A problem with the user's config, data or files (not a bug): reported without a traceback."""


class DataError(UserError, RuntimeError):
    """The dataset cannot be used at all (no shards, no usable samples)."""


class CheckpointError(UserError, FileNotFoundError):
    """A checkpoint that should exist does not, or does not fit the model."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work; str() is one line starting with the key."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key


INTERRUPT = "SIGINT"  # Ctrl-C: the user's stop (train/preemption.py)


class Preempted(Exception):
    """Raised after the checkpoint of a stop (a preemption signal, Ctrl-C) was written; the job should
    requeue (preemption) or end (Ctrl-C), and a rerun resumes."""

    def __init__(self, stage: str, step: int, signame: str, kept: str = "checkpoint written"):
        super().__init__(f"{stage}: stopped at step {step} on {signame}, {kept}")
        self.stage, self.step, self.signame = stage, step, signame

    @property
    def interrupted(self) -> bool:
        """Stopped by Ctrl-C: the user's stop, not a preemption (not requeued)."""
        return self.signame == INTERRUPT
