"""Forwarding the `logging` lines of framework-free code (training loops, which also run in Ray workers) to the
Prefect run log of the flow that calls it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from prefect import get_run_logger


class _ToRunLogger(logging.Handler):
    def __init__(self, logger):
        super().__init__()
        self.logger = logger

    def emit(self, record: logging.LogRecord) -> None:
        self.logger.log(record.levelno, record.getMessage())


@contextmanager
def forwarded(module: str) -> Iterator[None]:
    """While inside, the INFO and higher lines of logger `module` show in this run's logs, and only there: the run
    logger prints them on the console too, so they do not also propagate to the root logger's console handler."""
    source, handler = logging.getLogger(module), _ToRunLogger(get_run_logger())
    level, propagate = source.level, source.propagate
    source.addHandler(handler)
    source.setLevel(logging.INFO)
    source.propagate = False
    try:
        yield
    finally:
        source.removeHandler(handler)
        source.setLevel(level)
        source.propagate = propagate
