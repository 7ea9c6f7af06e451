"""The build's dashboard stays small and costs the same per shard however many shards a build has: the artifacts it
publishes are counted and measured (Prefect's calls recorded, a fake clock), never timed."""

import json
import math
from dataclasses import replace
from uuid import uuid4

import pyarrow.dataset as ds
import pytest

from flows import build_dashboard
from flows.build_dashboard import BuildDashboard, Pacer
from flows.shard_table import LATEST, WORST, ShardTable
from storage.build_totals import GALLERY_SHARDS, SHEET_SHARDS, BuildTotals
from storage.sources import WorkUnit
from tasks.config import BuildConfig
from tasks.plan import BuildPlan

STAGES = ("decode", "resolution", "caption", "masks")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _stats(shard: int, accepted: int, rate: float, rejected_at: str = "resolution") -> dict:
    inputs = 4
    funnel, left = [], inputs
    for stage in STAGES:
        out = inputs - accepted if stage == rejected_at else 0
        funnel.append({"stage": stage, "in": left, "rejected": out})
        left -= out
    return {"shard": shard, "inputs": inputs, "accepted": accepted, "rejected": inputs - accepted,
            "rejected_by_stage": {s: (inputs - accepted if s == rejected_at else 0) for s in STAGES},
            "funnel": funnel, "seconds": inputs / rate, "images_per_second": rate, "dropped_subjects": 1,
            "stage_seconds": {"decode": 0.01, "caption": 0.5, "masks": 0.25}, "description": f"unit {shard}",
            "node": "n1"}


class Recorder:
    """Prefect's artifact calls, recorded: (kind, rows or description, bytes sent)."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[str, object, int]] = []
        monkeypatch.setattr(build_dashboard, "create_table_artifact", self.table)
        monkeypatch.setattr(build_dashboard, "update_progress_artifact", self.progress)

    def table(self, table, key, description):
        self.calls.append(("table", table, len(json.dumps(table))))

    def progress(self, artifact_id, progress, description):
        self.calls.append(("progress", description, len(description)))

    def of(self, kind: str) -> list:
        return [c for c in self.calls if c[0] == kind]


class Log:
    def __init__(self):
        self.lines: dict[str, list[str]] = {"debug": [], "info": []}

    def debug(self, fmt, *args):
        self.lines["debug"].append(fmt % args)

    def info(self, fmt, *args):
        self.lines["info"].append(fmt % args)


def _plan(tmp_path, units: int) -> BuildPlan:
    todo = [WorkUnit(i, "folder", "/in", [(f"{i}.jpg", 100)] * 4) for i in range(units)]
    return BuildPlan(BuildConfig(), "tiny", tmp_path, todo, todo, set(), units, 0, None)


def test_many_shards_publish_a_bounded_table_and_paced_progress(tmp_path, monkeypatch):
    """5,000 shards over 500 s of the fake clock: a shard every 0.1 s."""
    calls, clock, log = Recorder(monkeypatch), Clock(), Log()
    units = 5000
    dashboard = BuildDashboard(_plan(tmp_path, units), uuid4(), log, lambda: {"caption": 2, "masks": 1},
                               clock=clock)
    for i in range(units):
        clock.now += 0.1
        slow = 0.5 if i in (1234, 4321) else 10.0 + i % 7
        dashboard.shard_done(WorkUnit(i, "folder", "/in", [("a.jpg", 100)] * 4),
                             _stats(i, accepted=0 if i == 77 else 3, rate=slow))
    dashboard.close()

    tables = calls.of("table")
    # once at the first shard, at most once a minute over 500 s, and the final one
    assert 2 <= len(tables) <= 1 + math.ceil(500 / build_dashboard.TABLE_SECONDS) + 1
    rows = tables[-1][1]
    assert len(rows) == 1 + 2 * WORST + LATEST  # a window, whatever the number of shards
    assert max(size for _, _, size in tables) < 20_000
    assert rows[0]["shown"] == "total" and rows[0]["shard"] == "5000 shards" and rows[0]["inputs"] == 20_000
    assert rows[0]["accepted"] == 3 * 4999 and rows[0]["rejected: resolution"] == 4999 + 4
    slowest = [r["shard"] for r in rows if r["shown"] == "slowest"]
    assert slowest[:2] == ["01234", "04321"] and len(slowest) == WORST
    assert [r["shard"] for r in rows if r["shown"] == "most rejected"][0] == "00077"
    assert [r["shard"] for r in rows if r["shown"] == "latest"][:2] == ["04999", "04998"]
    assert {k for r in rows for k in r} == set(rows[0])  # every row has every column
    assert rows[-1]["busy: caption"].endswith("%") and rows[-1]["actors"] == "caption 2, masks 1"

    progress = calls.of("progress")
    assert len(progress) <= 1 + math.ceil(500 / build_dashboard.PROGRESS_SECONDS) + 1
    assert progress[-1][1].startswith("5000/5000 shards complete · ")
    assert len(log.lines["debug"]) == units  # one line a shard, at DEBUG
    assert 2 <= len(log.lines["info"]) <= 1 + math.ceil(500 / build_dashboard.LOG_SECONDS) + 1
    assert len(dashboard.watch.events) <= 300 / 0.1 + 1  # the rate window (5 min) only

    # every shard is in the build log, in batches of BATCH_ROWS
    log_table = ds.dataset(tmp_path / "build_log", format="parquet").to_table()
    assert log_table.num_rows == units and sorted(log_table.column("shard").to_pylist()) == list(range(units))
    assert len(list((tmp_path / "build_log").glob("*.parquet"))) == 5
    row = log_table.filter(ds.field("shard") == 1234).to_pylist()[0]
    assert row["images_per_second"] == 0.5 and dict(row["rejected_by_stage"])["resolution"] == 1
    assert dict(row["actors"]) == {"caption": 2, "masks": 1} and set(dict(row["busy"])) == {"caption", "masks"}

    totals = dashboard.totals
    assert (totals.shards, totals.inputs, totals.accepted, totals.dropped_subjects) == (5000, 20_000, 14_997, 5000)
    assert totals.sheet_shards == [i for i in range(SHEET_SHARDS + 1) if i != 77][:SHEET_SHARDS]
    assert totals.gallery_shards == {"resolution": list(range(GALLERY_SHARDS))}


def test_the_pace_slows_as_a_run_ages_so_a_long_build_publishes_a_bounded_number_of_times():
    def count(days: float) -> int:
        clock = Clock()
        pacer = Pacer(60.0, clock)
        n = 0
        for _ in range(int(days * 86400 / 30)):  # a shard every 30 s
            clock.now += 30
            n += pacer.due()
        return n

    one, ten = count(1), count(10)
    assert 100 < one < 1440  # less than once a minute after the first 100 minutes
    assert ten < one + 100 * math.log(10) + 10  # ten times longer, about 230 more: it grows with the log of the age


def test_totals_of_disjoint_shards_merge_to_the_totals_of_all():
    stats = [_stats(i, accepted=i % 4, rate=5.0, rejected_at=STAGES[i % 2]) for i in range(40)]
    whole, left, right = BuildTotals(), BuildTotals(), BuildTotals()
    for s in stats:
        whole.add(s)
        (left if s["shard"] % 3 else right).add(s)
    left.merge(right)
    assert left.seconds == pytest.approx(whole.seconds)
    assert left.stage_seconds == pytest.approx(whole.stage_seconds) and whole.stage_seconds["decode"] > 0
    assert replace(left, seconds=0, stage_seconds={}) == replace(whole, seconds=0, stage_seconds={})
    assert whole.funnel_rows()[0] == {"stage": "decode", "in": 160, "rejected": sum(4 - i % 4 for i in range(0, 40, 2)),
                                      "out": 160 - sum(4 - i % 4 for i in range(0, 40, 2))}
    assert whole.sheet_shards == [i for i in range(40) if i % 4][:SHEET_SHARDS]


@pytest.mark.parametrize("count", [0, 3, 12])
def test_a_table_with_few_shards_shows_each_once_per_kind(count):
    table = ShardTable()
    totals = BuildTotals()
    for i in range(count):
        s = _stats(i, accepted=2, rate=1.0 + i)
        totals.add(s)
        table.add(s, {"shard": f"{i:05d}"})
    rows = table.rows(totals, 0.0)
    assert len(rows) == 1 + 2 * min(count, WORST) + min(count, LATEST)
    assert [r["shard"] for r in rows if r["shown"] == "slowest"] == [f"{i:05d}" for i in range(min(count, WORST))]
