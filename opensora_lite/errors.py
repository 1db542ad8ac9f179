"""Errors a user can fix. The CLIs print them as one line and exit with status 2."""


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
