"""What a running build shows, at a cost per finished shard that does not grow with the build: the progress artifact,
the shard table (a bounded window: flows/shard_table.py), a run-log line now and then, the build log (every shard's
row, `DIR/build_log/`), and the running totals the summary is made from.

Prefect stores every version of a table artifact and an event for each, so publications are paced: the interval is
at least a fixed number of seconds and at least the run's age / SPREAD, so that once a run is older than SPREAD
intervals it publishes about SPREAD more times each time its age grows e-fold (the table: ~340 versions in a day, ~570
in ten days). What a build adds to the Prefect database is bounded by its duration, never by its number of units.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from uuid import UUID

from prefect.artifacts import create_table_artifact, update_progress_artifact
from tqdm import tqdm

from flows.build_watch import BuildWatch
from flows.shard_table import ShardTable, busy_columns, shard_row
from storage.build_log import BuildLog
from storage.build_totals import BuildTotals
from storage.sources import WorkUnit
from tasks.plan import BuildPlan

PROGRESS_SECONDS = 5.0  # the progress artifact is updated at most this often …
TABLE_SECONDS = 60.0  # … the shard table published …
LOG_SECONDS = 60.0  # … and an INFO line logged (each shard's line is at DEBUG)
SPREAD = 100  # … and each of them no more often than the run's age / SPREAD


class Pacer:
    """Says when something paced is due: `every` seconds at least, and at least the run's age / `spread`."""

    def __init__(self, every: float, clock: Callable[[], float], spread: int = SPREAD):
        self.every, self.clock, self.spread = every, clock, spread
        self.started = self.last = clock()
        self.fresh = True  # the first call is due: the dashboard shows something at once

    def due(self) -> bool:
        now = self.clock()
        if self.fresh or now - self.last >= max(self.every, (now - self.started) / self.spread):
            self.fresh, self.last = False, now
            return True
        return False


class BuildDashboard:
    """`shard_done(unit, stats)` for each shard built; `close()` publishes the final state."""

    def __init__(self, plan: BuildPlan, progress: UUID, log, actors: Callable[[], dict[str, int]],
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.done = len(plan.units), len(plan.complete)
        self.progress, self.log, self.actors = progress, log, actors
        self.watch = BuildWatch(plan.todo, actors, clock=clock)
        self.table = ShardTable()
        self.totals = BuildTotals()  # of the shards this run built
        self.build_log = BuildLog(plan.output, clock=clock)
        self.pace = {what: Pacer(every, clock) for what, every in (("progress", PROGRESS_SECONDS),
                                                                   ("table", TABLE_SECONDS), ("log", LOG_SECONDS))}
        self.bar = tqdm(total=len(plan.todo), unit="shard", desc="build-dataset", disable=None)

    def shard_done(self, unit: WorkUnit, stats: dict) -> None:
        self.done += 1
        self.bar.update()
        self.totals.add(stats)
        self.watch.shard_done(unit, stats)
        busy, actors = self.watch.busy(), self.actors()
        self.build_log.write(stats, busy, actors)
        sizes = {"actors": ", ".join(f"{k} {v}" for k, v in actors.items())}
        self.table.add(stats, shard_row(stats) | busy_columns(busy) | sizes)
        self.log.debug("shard %05d: %d accepted, %d rejected, %.2f images/s", unit.shard, stats["accepted"],
                       stats["rejected"], stats["images_per_second"] or 0)
        if self.pace["log"].due():
            self.log.info("%s", self.watch.describe(self.done, self.total))
        if self.pace["table"].due():
            self.publish_table()
        if self.pace["progress"].due():
            self.publish_progress()

    def publish_table(self) -> None:
        images, _ = self.watch.rates()
        create_table_artifact(table=self.table.rows(self.totals, images), key="build-dataset-shards",
                              description="totals, the slowest and most rejecting shards, the latest ones; every "
                                          "shard is in the dataset's build_log/")

    def publish_progress(self) -> None:
        update_progress_artifact(self.progress, 100.0 * self.done / self.total,
                                 description=self.watch.describe(self.done, self.total))

    def close(self) -> None:
        """The final table, progress and log line; the build log's last batch."""
        self.bar.close()
        self.build_log.close()
        if self.totals.shards:
            self.publish_table()
            self.publish_progress()
            self.log.info("%s", self.watch.describe(self.done, self.total))
