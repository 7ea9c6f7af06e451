"""Each command prepares its plan once. The CLI prepares it before Prefect starts (bad input fails in one line, in a
second) and hands the resolved plan to the flow it then calls in this process; a deployment's run passes raw
parameters, and the flow prepares them itself, through the same function."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")
_HANDED: ContextVar[dict[str, Any] | None] = ContextVar("plans handed to flows", default=None)


@contextlib.contextmanager
def handing(flow: str, plan: Any) -> Iterator[None]:
    """While the block runs, `flow`'s next `prepared` call takes `plan` instead of preparing it again."""
    token = _HANDED.set((_HANDED.get() or {}) | {flow: plan})
    try:
        yield
    finally:
        _HANDED.reset(token)


def prepared(flow: str, prepare: Callable[[], T]) -> T:
    """The plan handed to `flow` (taken once: a second run of the same flow in the block prepares its own), else
    `prepare()`."""
    handed = _HANDED.get()
    if handed and flow in handed:
        return handed.pop(flow)
    return prepare()
