"""The build executor's bookkeeping that the flow relies on: running stage costs for rebalancing, and the totals of
earlier shards summed in chunks on Ray workers equal to those summed here."""

import pytest

from storage.build_totals import BuildTotals
from storage.sample import Sample, SourceRef
from storage.schema import feature_schema
from storage.shard_writer import ShardWriter
from tasks import executor
from tasks.executor import shard_totals, stage_costs
from tasks.pipeline import STAGE_NAMES


def _stats(seconds: dict[str, float], funnel: dict[str, int]) -> dict:
    return {"shard": 0, "inputs": 10, "accepted": 0, "rejected": 10, "seconds": 1.0, "stage_seconds": seconds,
            "funnel": [{"stage": k, "in": v, "rejected": 0} for k, v in funnel.items()]}


def test_stage_costs_are_seconds_per_sample_that_reached_each_stage():
    costs = BuildTotals()
    costs.add(_stats({"decode": 1.0, "caption": 4.0, "masks": 0.0}, {"decode": 10, "caption": 8, "masks": 0}))
    costs.add(_stats({"decode": 1.0, "caption": 2.0, "masks": 3.0}, {"decode": 10, "caption": 4, "masks": 2}))
    model, unit = stage_costs(costs)
    assert model == {"caption": pytest.approx(0.5), "masks": pytest.approx(1.5)}  # 6 s / 12, 3 s / 2
    assert unit == pytest.approx(0.1)  # decode: 2 s / 20, the unit's own work


def test_reused_outputs_measure_no_cost():
    """A re-filtered build took most captions from an earlier build: the caption's cost is per caption computed."""
    stats = _stats({"decode": 1.0, "caption": 3.0}, {"decode": 10, "caption": 10})
    stats["computed_by_stage"], stats["reused_by_stage"] = {"caption": 2}, {"caption": 8}
    totals = BuildTotals()
    totals.add(stats)
    model, unit = stage_costs(totals)
    assert model == {"caption": pytest.approx(1.5)}  # 3 s / 2 computed, not / 10 that reached it
    assert unit == pytest.approx(0.1)
    stats["computed_by_stage"], stats["stage_seconds"] = {"caption": 0}, {"decode": 1.0, "caption": 0.0}
    assert stage_costs(BuildTotals.of(stats))[0] == {}  # all reused: no measurement (the declared cost stands)


def _rejected(key: str) -> Sample:
    sample = Sample(key=key, source=f"/photos/{key}.jpg", ref=SourceRef("unused"))
    sample.reject_at("decode", "empty file")
    return sample


def _write(root, shard: int, rejects: int) -> dict:
    writer = ShardWriter(root, shard, feature_schema(8, 8), 0.8, STAGE_NAMES)
    for i in range(rejects):
        writer.add(_rejected(f"s{shard}_{i}"))
    return writer.close({"description": "test", "fingerprint": "f"})


def test_earlier_shards_summed_on_workers_in_chunks_equal_the_sum_here(tmp_path, monkeypatch, ray_local):
    stats = [_write(tmp_path, shard, rejects=1 + shard % 3) for shard in range(7)]
    here = BuildTotals()
    for s in stats:
        here.add(s)
    one_chunk = shard_totals(tmp_path, list(range(7)))  # a single chunk: read in this process
    monkeypatch.setattr(executor, "TOTALS_CHUNK", 2)
    chunked = shard_totals(tmp_path, list(range(7)))  # four Ray tasks
    for totals in (one_chunk, chunked):
        assert totals.seconds == pytest.approx(here.seconds)
        totals.seconds = here.seconds
        assert totals == here
    assert here.shards == 7 and here.rejected == sum(1 + s % 3 for s in range(7))
    assert here.gallery_shards == {"decode": list(range(6))} and here.sheet_shards == []
