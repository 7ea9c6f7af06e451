"""What build-dataset's flow says about a running build, from the per-shard stats it already receives (kilobytes;
never an image): images/s and accepted samples/s over the last minutes, the ETA, and each model stage's busy
fraction, for the progress artifact and the shard table; and the units still to write, as a metric for the
dashboard's ETA (lambda_eclipse/metrics.py).

A stage's busy time is what its actors spent on a shard's samples (each sample's `seconds`, summed in the shard's
`stage_seconds`); it is counted when the shard is written, so over a window of a few minutes (many shards) it is the
share of the stage's actors' time spent working: near 1, the stage is the bottleneck; low, its actors wait for input.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from lambda_eclipse import metrics
from storage.sources import WorkUnit

WINDOW = 300.0  # seconds: "the last few minutes" of rates, ETA and busy fractions


def duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    if seconds < 48 * 3600:
        hours, rest = divmod(seconds, 3600)
        return f"{hours} h {round(rest / 60):02d} min"
    return f"{seconds / 86400:.1f} days"


class BuildWatch:
    """Running sums over the window (each shard added once and subtracted once when it leaves it) and the units
    left, so that every call costs the same at the 100th shard and the 100,000th."""

    def __init__(self, todo: list[WorkUnit], actors: Callable[[], dict[str, int]], window: float = WINDOW,
                 clock: Callable[[], float] = time.monotonic):
        self.actors = actors
        self.window = window
        self.clock = clock
        self.started = clock()
        self.events: deque[tuple[float, int, int, int, dict[str, float]]] = deque()  # t, inputs, accepted, bytes, s
        self.sums = [0, 0, 0]  # inputs, accepted, bytes of the events in the window
        self.stage_sums: dict[str, float] = {}  # stage → seconds of the events in the window
        self.left = len(todo)
        self.left_bytes = sum(u.bytes for u in todo)
        self.left_images = sum(u.images or 0 for u in todo)
        self.uncounted = sum(1 for u in todo if u.images is None)  # tars: counted as they are read
        self.seen = False  # any shard done yet
        metrics.units_remaining(self.left)

    def shard_done(self, unit: WorkUnit, stats: dict) -> None:
        self.left -= 1
        self.seen = True
        self.left_bytes -= unit.bytes
        self.left_images -= unit.images or 0
        self.uncounted -= unit.images is None
        event = (self.clock(), stats["inputs"], stats["accepted"], unit.bytes, dict(stats.get("stage_seconds", {})))
        self.events.append(event)
        self._count(event, 1)
        self._expire()
        metrics.units_remaining(self.left)

    def _count(self, event: tuple, sign: int) -> None:
        for i in range(3):
            self.sums[i] += sign * event[i + 1]
        for stage, seconds in event[4].items():
            self.stage_sums[stage] = self.stage_sums.get(stage, 0.0) + sign * seconds

    def _expire(self) -> None:
        """Events older than the window leave it (and its sums)."""
        start = self.clock() - self.window
        while self.events and self.events[0][0] < start:
            self._count(self.events.popleft(), -1)

    def _span(self) -> float:
        """Seconds the window covers: the last `window` seconds, or since the build started."""
        return max(1e-9, min(self.window, self.clock() - self.started))

    def rates(self) -> tuple[float, float]:
        """(images/s, accepted samples/s) over the window."""
        self._expire()
        span = self._span()
        return self.sums[0] / span, self.sums[1] / span

    def eta(self) -> float | None:
        """Seconds until the remaining units are written at the window's pace: by images where every remaining unit's
        are known (folders), else by bytes (tars are counted as they are read); None before any pace is known."""
        self._expire()
        if not self.left:
            return 0.0
        if not self.events:
            return None
        span = self._span()
        if not self.uncounted and self.sums[0]:
            return self.left_images / (self.sums[0] / span)
        if self.sums[2]:
            return self.left_bytes / (self.sums[2] / span)
        return None

    def busy(self) -> dict[str, float]:
        """Per model stage: its actors' busy fraction over the window (0–1)."""
        self._expire()
        span = self._span()
        return {stage: round(min(1.0, max(0.0, self.stage_sums.get(stage, 0.0)) / (span * max(1, actors))), 3)
                for stage, actors in self.actors().items()}

    def describe(self, done: int, total: int, now: datetime | None = None) -> str:
        """The progress artifact's description: shards, pace over the last minutes, ETA."""
        head = f"{done}/{total} shards complete"
        if not self.seen:
            return head
        images, accepted = self.rates()
        minutes = self.window / 60
        text = f"{head} · {images:.2f} images/s, {accepted:.2f} accepted samples/s over the last {minutes:g} min"
        eta = self.eta()
        if eta is not None and self.left:
            at = (now or datetime.now(UTC)) + timedelta(seconds=eta)
            text += f" · ETA {duration(eta)} (at {at:%Y-%m-%d %H:%M} UTC)"
        return text
