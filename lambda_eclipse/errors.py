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


class WorkerError(BuildError):
    """A Ray worker failed (not a user's input): one line naming the stage, the worker (actor, trainer, task), its
    node where known, and the cause."""


def ray_error_reason(exc: BaseException) -> str:
    """The cause of a Ray error in one line: the original exception's type (but a UserError's), its message's first
    line and, when there are more, its last (a traceback's final line)."""
    cause = getattr(exc, "cause", None) or exc
    lines = [line.strip() for line in str(cause).strip().splitlines() if line.strip()]
    if not lines:
        return type(cause).__name__
    text = lines[0] if len(lines) == 1 else f"{lines[0]} … {lines[-1]}"
    return text if isinstance(cause, UserError) else f"{type(cause).__name__}: {text}"
