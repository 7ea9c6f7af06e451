"""`required`: a field that an earlier step has filled in, typed without its None.

Sample and Detection fields start as None and are set by the stage that computes them (decode sets `image`, caption
`caption`, masks `mask`, …). A later stage reading one relies on the stage order: None there is a bug, not bad input.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


def required(value: T | None, what: str) -> T:
    """`value`, or a RuntimeError naming `what` when it is None."""
    if value is None:
        raise RuntimeError(f"{what} is not set: the step that sets it has not run")
    return value
