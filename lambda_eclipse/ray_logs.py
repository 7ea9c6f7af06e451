"""The `logging` lines of code running in Ray workers (a training loop), relayed to the same loggers in the driver.

The flow process only watches; its run log is what a user reads (flows/run_log.py forwards the driver's loggers to
it). Ray's own `log_to_driver` prints workers' stdout unstructured, at any volume, so it is off here
(ray_session.py); instead a worker attaches `WorkerLogs.forwarding(...)` to the loggers whose lines matter (progress,
checkpoints, resumption) and those lines travel through a Ray queue to the driver, each with the worker's label.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

MAX_QUEUED = 10_000  # lines waiting for the driver; beyond it a worker drops lines rather than wait


class _ToQueue(logging.Handler):
    def __init__(self, queue: Any, label: str):
        super().__init__(logging.INFO)
        self.queue, self.label = queue, label

    def emit(self, record: logging.LogRecord) -> None:
        from ray.util.queue import Full

        try:
            self.queue.put_nowait((record.name, record.levelno, f"[{self.label}] {record.getMessage()}"))
        except Full:  # the driver is behind: a progress line is not worth stalling training for
            pass
        except Exception:  # noqa: BLE001  (the queue's actor is gone: the driver ended; logging must never raise)
            self.handleError(record)


@dataclass
class WorkerLogs:
    """Sent to the workers (it holds only the queue's actor handle)."""

    queue: Any

    @contextlib.contextmanager
    def forwarding(self, label: str, *loggers: str) -> Iterator[None]:
        """In a worker: while inside, the INFO and higher lines of `loggers` also reach the driver, as "[label] …"."""
        handler = _ToQueue(self.queue, label)
        sources = [logging.getLogger(name) for name in loggers]
        levels = [source.level for source in sources]
        for source in sources:
            source.addHandler(handler)
            source.setLevel(min(source.getEffectiveLevel(), logging.INFO))
        try:
            yield
        finally:
            for source, level in zip(sources, levels):
                source.removeHandler(handler)
                source.setLevel(level)


@contextlib.contextmanager
def relayed_logs() -> Iterator[WorkerLogs]:
    """In the driver (a Ray session open): a queue for the workers' lines, which a thread logs here, to the logger of
    the same name, as they arrive; what is still queued when the block ends is logged before it returns."""
    from ray.exceptions import RayError
    from ray.util.queue import Empty, Queue

    queue = Queue(maxsize=MAX_QUEUED, actor_options={"num_cpus": 0})
    stop = threading.Event()

    def log(items: list) -> None:
        for name, level, message in items:
            logging.getLogger(name).log(level, "%s", message)

    def drain() -> None:
        while not stop.is_set():
            try:
                log([queue.get(timeout=0.5)])
            except Empty:
                pass
            except RayError:  # the queue's actor died with the cluster: nothing more will come
                return

    thread = threading.Thread(target=drain, name="ray-worker-logs", daemon=True)
    thread.start()
    try:
        yield WorkerLogs(queue)
    finally:
        stop.set()
        thread.join()
        with contextlib.suppress(RayError):
            log(queue.get_nowait_batch(queue.qsize()))
            queue.shutdown()
