"""The build log: one row per shard built, the full history that the dashboard's shard table (a bounded window) leaves
out. Appended in batches as Parquet files under `DIR/build_log/` (one file per batch, named by the run's start and
the batch's number, so runs and batches never overwrite each other and a crash loses at most the batch in memory);
read the whole log with `pyarrow.dataset.dataset("DIR/build_log")` or any Parquet reader.
"""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from storage.fs import Location, join, resolve, write_bytes

BUILD_LOG = "build_log"
BATCH_ROWS = 1000  # rows per file …
BATCH_SECONDS = 300.0  # … or what five minutes gave, whichever comes first

SCHEMA = pa.schema([
    ("shard", pa.int32()),
    ("description", pa.string()),
    ("node", pa.string()),
    ("finished", pa.timestamp("s", tz="UTC")),
    ("inputs", pa.int64()),
    ("accepted", pa.int64()),
    ("rejected", pa.int64()),
    ("seconds", pa.float64()),
    ("images_per_second", pa.float64()),
    ("rejected_by_stage", pa.map_(pa.string(), pa.int64())),
    ("stage_seconds", pa.map_(pa.string(), pa.float64())),
    ("busy", pa.map_(pa.string(), pa.float64())),  # each model stage's busy fraction over the last minutes
    ("actors", pa.map_(pa.string(), pa.int64())),  # each model stage's serving actors
])


class BuildLog:
    """Writer of one run's build log (write, close)."""

    def __init__(self, root: Location, clock=time.monotonic):
        self.directory = join(root, BUILD_LOG)
        self.run = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        self.clock = clock
        self.rows: list[dict] = []
        self.batches = 0
        self.since = clock()

    def write(self, stats: dict, busy: dict[str, float], actors: dict[str, int]) -> None:
        """One shard's row, from its stats (`_stats.json`) and the dashboard's view when it finished."""
        self.rows.append({
            "shard": stats["shard"], "description": stats.get("description"), "node": stats.get("node"),
            "finished": datetime.now(UTC), "inputs": stats["inputs"], "accepted": stats["accepted"],
            "rejected": stats["rejected"], "seconds": stats["seconds"],
            "images_per_second": stats.get("images_per_second"),
            "rejected_by_stage": list((stats.get("rejected_by_stage") or {}).items()),
            "stage_seconds": list((stats.get("stage_seconds") or {}).items()),
            "busy": list(busy.items()), "actors": list(actors.items()),
        })
        if len(self.rows) >= BATCH_ROWS or self.clock() - self.since >= BATCH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            buf = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(self.rows, schema=SCHEMA), buf)
            if not self.batches:
                fs, base = resolve(self.directory)
                fs.makedirs(base, exist_ok=True)
            write_bytes(join(self.directory, f"{self.run}-{self.batches:05d}.parquet"), buf.getvalue())
            self.batches += 1
            self.rows = []
        self.since = self.clock()

    def close(self) -> None:
        self.flush()
