"""Errors a user can act on: the CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """Bad input or environment: the message names the problem and the fix."""


class ModelNotFoundError(UserError):
    """Weights for the `paper` profile are neither in the local cache nor at the given path."""

    def __init__(self, model: str, source: str, how: str):
        super().__init__(f"weights for {model} not found ({source}); {how}")
        self.model = model


class BuildError(Exception):
    """A work unit failed on a worker (an unwritable or full output, a crashed stage): one line naming the shard,
    its inputs and the cause; no shard is left looking complete."""
