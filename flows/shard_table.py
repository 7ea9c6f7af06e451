"""The dashboard's shard table: a bounded window of a build's shards, whatever their number. Its rows are the totals
so far, the slowest shards and the most rejecting ones (the shards a person looks for), then the latest shards,
newest first; each shard row gives its counts, rejects per stage, images/s and the samples/s of each stage. Every
shard's row is in the build log (storage/build_log.py), not here.
"""

from __future__ import annotations

import heapq
from collections import deque

from storage.build_totals import BuildTotals

LATEST = 20  # latest shards shown
WORST = 5  # slowest and most rejecting shards shown, of each


def shard_row(stats: dict) -> dict:
    """One shard's row: counts, rejects per stage, and samples/s of each stage on this shard."""
    rate = {
        f"{f['stage']} /s": round(f["in"] / stats["stage_seconds"][f["stage"]], 1)
        for f in stats["funnel"]
        if stats["stage_seconds"].get(f["stage"])
    }
    return (
        {"shard": f"{stats['shard']:05d}", "inputs": stats["inputs"], "accepted": stats["accepted"]}
        | {f"rejected: {k}": v for k, v in stats["rejected_by_stage"].items()}
        | {"images/s": stats["images_per_second"]}
        | rate
    )


def busy_columns(busy: dict[str, float]) -> dict[str, str]:
    """The busy columns: each model stage's busy fraction when the shard finished (flows/build_watch.py)."""
    return {f"busy: {stage}": f"{fraction:.0%}" for stage, fraction in busy.items()}


class ShardTable:
    def __init__(self, latest: int = LATEST, worst: int = WORST):
        self.latest: deque[dict] = deque(maxlen=latest)
        self.worst = worst
        self.seen = 0  # ties in the heaps go to the earlier shard
        self.slowest: list[tuple[float, int, dict]] = []  # a max-heap of the slowest on images/s (negated)
        self.rejecting: list[tuple[float, int, dict]] = []  # a min-heap of the most rejecting on rejected fraction

    def add(self, stats: dict, row: dict) -> None:
        """A finished shard: its stats and its row (`shard_row` and the dashboard's columns)."""
        self.seen += 1
        self.latest.append(row)
        rate = stats["images_per_second"]
        if rate is not None:
            self._keep(self.slowest, (-rate, -self.seen, row))
        if stats["inputs"]:
            self._keep(self.rejecting, (stats["rejected"] / stats["inputs"], -self.seen, row))

    def _keep(self, heap: list, item: tuple) -> None:
        if len(heap) < self.worst:
            heapq.heappush(heap, item)
        elif item[:2] > heap[0][:2]:
            heapq.heapreplace(heap, item)

    def rows(self, totals: BuildTotals, images_per_second: float) -> list[dict]:
        """The table to publish: a totals row, the slowest, the most rejecting, the latest (newest first); every
        row with the same columns."""
        total = ({"shown": "total", "shard": f"{totals.shards} shards", "inputs": totals.inputs,
                  "accepted": totals.accepted}
                 | {f"rejected: {k}": v for k, v in totals.rejected_by_stage().items()}
                 | {"images/s": round(images_per_second, 2)})
        rows = [total]
        rows += [{"shown": "slowest"} | r for _, _, r in sorted(self.slowest, reverse=True)]
        rows += [{"shown": "most rejected"} | r for _, _, r in sorted(self.rejecting, reverse=True)]
        rows += [{"shown": "latest"} | r for r in reversed(self.latest)]
        columns = list(dict.fromkeys(k for r in rows for k in r))
        return [{k: r.get(k, "") for k in columns} for r in rows]
