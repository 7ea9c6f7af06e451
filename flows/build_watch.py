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
    def __init__(self, todo: list[WorkUnit], actors: Callable[[], dict[str, int]], window: float = WINDOW,
                 clock: Callable[[], float] = time.monotonic):
        self.remaining = {u.shard: u for u in todo}
        self.actors = actors
        self.window = window
        self.clock = clock
        self.started = clock()
        self.events: deque[tuple[float, int, int, int, dict[str, float]]] = deque()  # t, inputs, accepted, bytes, s
        metrics.units_remaining(len(self.remaining))

    def shard_done(self, unit: WorkUnit, stats: dict) -> None:
        self.remaining.pop(unit.shard, None)
        now = self.clock()
        self.events.append((now, stats["inputs"], stats["accepted"], unit.bytes, dict(stats.get("stage_seconds", {}))))
        while self.events and self.events[0][0] < now - self.window:
            self.events.popleft()
        metrics.units_remaining(len(self.remaining))

    def _span(self) -> float:
        """Seconds the window covers: the last `window` seconds, or since the build started."""
        return max(1e-9, min(self.window, self.clock() - self.started))

    def _recent(self) -> list[tuple[float, int, int, int, dict[str, float]]]:
        now = self.clock()
        return [e for e in self.events if e[0] >= now - self.window]

    def rates(self) -> tuple[float, float]:
        """(images/s, accepted samples/s) over the window."""
        recent, span = self._recent(), self._span()
        return sum(e[1] for e in recent) / span, sum(e[2] for e in recent) / span

    def eta(self) -> float | None:
        """Seconds until the remaining units are written at the window's pace: by images where every remaining unit's
        are known (folders), else by bytes (tars are counted as they are read); None before any pace is known."""
        recent, span = self._recent(), self._span()
        if not self.remaining:
            return 0.0
        if not recent:
            return None
        left = list(self.remaining.values())
        if all(u.images is not None for u in left) and sum(e[1] for e in recent):
            return sum(u.images or 0 for u in left) / (sum(e[1] for e in recent) / span)
        if sum(e[3] for e in recent):
            return sum(u.bytes for u in left) / (sum(e[3] for e in recent) / span)
        return None

    def busy(self) -> dict[str, float]:
        """Per model stage: its actors' busy fraction over the window (0–1)."""
        recent, span = self._recent(), self._span()
        out = {}
        for stage, actors in self.actors().items():
            seconds = sum(e[4].get(stage, 0.0) for e in recent)
            out[stage] = round(min(1.0, seconds / (span * max(1, actors))), 3)
        return out

    def busy_columns(self) -> dict[str, str]:
        """The shard table's busy columns: each model stage's busy fraction when the shard finished."""
        return {f"busy: {stage}": f"{fraction:.0%}" for stage, fraction in self.busy().items()}

    def describe(self, done: int, total: int, now: datetime | None = None) -> str:
        """The progress artifact's description: shards, pace over the last minutes, ETA."""
        head = f"{done}/{total} shards complete"
        if not self.events:
            return head
        images, accepted = self.rates()
        minutes = self.window / 60
        text = f"{head} · {images:.2f} images/s, {accepted:.2f} accepted samples/s over the last {minutes:g} min"
        eta = self.eta()
        if eta is not None and self.remaining:
            at = (now or datetime.now(UTC)) + timedelta(seconds=eta)
            text += f" · ETA {duration(eta)} (at {at:%Y-%m-%d %H:%M} UTC)"
        return text
