"""A sample build's forecast (tasks/forecast.py): Wilson intervals, the yield and cost for the whole listing, and the
forecast beside a full build's actual numbers. Pure arithmetic: no Ray, no GPU."""

import json

import pytest

from storage.build_totals import BuildTotals
from tasks.actors import demands
from tasks.config import load_build_config
from tasks.forecast import SAMPLE_CLUSTER, forecast, forecast_markdown, forecast_vs_actual, wilson
from tasks.pipeline import STAGE_NAMES
from tasks.placement import CLUSTER_SHAPES, plan_pools

CFG = load_build_config()
CPU_NODE = {"node-a": {"CPU": 4.0}}
MEASURED = {"caption": 0.2, "nouns": 0.01, "boxes": 0.1, "masks": 0.4, "features": 0.05}
UNIT = 0.02


def _totals(inputs: int, rejected: dict[str, int], subjects: int = 0, size: int = 0) -> BuildTotals:
    """One shard's totals: `inputs` through the stages, `rejected` at the ones named."""
    funnel, left = [], inputs
    for stage in STAGE_NAMES:
        funnel.append({"stage": stage, "in": left, "rejected": rejected.get(stage, 0)})
        left -= rejected.get(stage, 0)
    totals = BuildTotals()
    totals.add({"shard": 0, "inputs": inputs, "accepted": left, "rejected": inputs - left, "seconds": 10.0,
                "funnel": funnel, "subjects": subjects, "files": {"00000.tar": {"sha256": "", "bytes": size}}})
    return totals


SAMPLE = _totals(100, {"decode": 10, "resolution": 20, "box_filters": 10, "mask_filters": 10}, subjects=120,
                 size=2_000_000)


@pytest.mark.parametrize("successes, trials, low, high", [
    (5, 10, 0.2366, 0.7634),
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
    (50, 100, 0.4038, 0.5962),
    (1, 20, 0.0089, 0.2361),
])
def test_wilson_intervals_match_the_published_values(successes, trials, low, high):
    assert wilson(successes, trials) == pytest.approx((low, high), abs=1e-4)


def test_the_yield_for_the_listing_follows_the_sample():
    f = forecast(SAMPLE, 10_000, MEASURED, UNIT, CPU_NODE, CFG)
    assert f["accepted"] == {"expected": 5000, "low": 4038, "high": 5962, "rate": 0.5,
                             "rate_low": pytest.approx(0.4038, abs=1e-4), "rate_high": pytest.approx(0.5962, abs=1e-4)}
    assert f["subjects"] == 12_000  # 2.4 subjects per accepted sample
    assert f["bytes"] == 200_000_000  # 20 KB per input
    rows = {r["stage"]: r for r in f["stages"]}
    assert [r["stage"] for r in f["stages"]] == STAGE_NAMES
    resolution = rows["resolution"]
    assert (resolution["in"], resolution["rejected"], resolution["pass_rate"]) == (90, 20, pytest.approx(7 / 9))
    assert (resolution["low"], resolution["high"]) == pytest.approx((0.6815, 0.8513), abs=1e-4)
    assert (rows["features"]["pass_rate"], rows["features"]["high"]) == (1.0, 1.0)
    # each stage's cost per input: its measured cost per sample times the share of inputs that reach it
    assert f["cost_per_input"] == pytest.approx({"caption": 0.2 * 0.7, "nouns": 0.01 * 0.7, "boxes": 0.1 * 0.7,
                                                 "masks": 0.4 * 0.6, "features": 0.05 * 0.5})
    json.dumps(f, allow_nan=False)  # DIR/forecast.json


def test_time_and_gpu_hours_per_cluster():
    f = forecast(SAMPLE, 10_000, MEASURED, UNIT, CPU_NODE, CFG, estimated=True)
    clusters = {c["name"]: c for c in f["clusters"]}
    assert list(clusters) == [SAMPLE_CLUSTER, *(s.name for s in CLUSTER_SHAPES)]
    here = clusters[SAMPLE_CLUSTER]
    rate = plan_pools(CPU_NODE, demands(CFG, f["cost_per_input"]), UNIT).predicted
    assert here["samples_per_second"] == pytest.approx(rate)
    assert here["hours"] == pytest.approx(10_000 / rate / 3600) and here["gpu_hours"] == 0
    gpu = clusters["one node of 8 H100-class GPUs, 96 CPUs"]
    assert gpu["gpus"] == 8 and gpu["gpu_hours"] == pytest.approx(gpu["hours"] * 8)
    # more nodes, more samples/s
    assert clusters["16 such nodes"]["samples_per_second"] > 10 * gpu["samples_per_second"]
    assert (clusters["one 64-core CPU node"]["samples_per_second"]
            > 2 * clusters["3 nodes x 6 CPUs (the local test cluster)"]["samples_per_second"])
    two = forecast(SAMPLE, 10_000, MEASURED, UNIT, {"a": {"CPU": 4.0}, "b": {"CPU": 4.0}}, CFG)
    assert two["clusters"][0]["samples_per_second"] > 1.5 * here["samples_per_second"]


def test_stages_that_few_inputs_reach_cost_less_per_input():
    few = _totals(100, {"decode": 90})  # 10 % reach the model stages
    all_reach = _totals(100, {})
    assert (forecast(few, 1000, MEASURED, UNIT, CPU_NODE, CFG)["clusters"][0]["samples_per_second"]
            > 3 * forecast(all_reach, 1000, MEASURED, UNIT, CPU_NODE, CFG)["clusters"][0]["samples_per_second"])


def test_the_markdown_has_the_stages_the_yield_and_every_cluster():
    text = forecast_markdown(forecast(SAMPLE, 10_000, MEASURED, UNIT, CPU_NODE, CFG, estimated=True))
    assert "for a listing of ~10000 images (estimated from the tars' sizes)" in text
    assert "| resolution | 90 | 20 | 77.8% | 68.2% – 85.1% |" in text
    assert "| accepted samples | 5000 | 4038 – 5962 |" in text
    assert "| subject crops | 12000 | |" in text and "| output | 200 MB | |" in text
    for name in (SAMPLE_CLUSTER, *(s.name for s in CLUSTER_SHAPES)):
        assert f"| {name} |" in text
    assert "| 16 such nodes | 16 | 1536 | 128 | 9,223 |" in text


def test_forecast_vs_actual_says_whether_the_build_fell_inside():
    f = forecast(SAMPLE, 10_000, MEASURED, UNIT, CPU_NODE, CFG)
    inside = forecast_vs_actual(f, _totals(10_000, {"decode": 1000, "resolution": 2100, "box_filters": 900,
                                                    "mask_filters": 1000}))
    assert "| accepted samples | 5000 | 4038 – 5962 | 5000 | yes |" in inside
    assert "| resolution | 77.8% | 68.2% – 85.1% | 76.7% | yes |" in inside
    outside = forecast_vs_actual(f, _totals(10_000, {"decode": 100, "resolution": 200}))
    assert "| accepted samples | 5000 | 4038 – 5962 | 9700 | **no** |" in outside
    assert "| resolution | 77.8% | 68.2% – 85.1% | 98.0% | **no** |" in outside
    assert "| decode | 90.0% | 82.6% – 94.5% | 99.0% | **no** |" in outside


def _shard(shard: int, reused: dict[str, int] | None = None) -> dict:
    stats = {"shard": shard, "inputs": 10, "accepted": 8, "rejected": 2, "seconds": 1.0, "subjects": 20,
             "funnel": [{"stage": "decode", "in": 10, "rejected": 2}, {"stage": "caption", "in": 8, "rejected": 0}],
             "files": {"a.parquet": {"sha256": "", "bytes": 300}, "a.tar": {"sha256": "", "bytes": 700}}}
    if reused is not None:
        stats |= {"reused_by_stage": reused, "computed_by_stage": {k: 8 - v for k, v in reused.items()}}
    return stats


def test_the_totals_a_forecast_reads_sum_subjects_bytes_and_reuse():
    from storage.report import funnel_markdown

    totals = BuildTotals()
    totals.add(_shard(0, {"caption": 3}))
    totals.add(_shard(1, {"caption": 5}))
    old = {k: v for k, v in _shard(2).items() if k not in ("subjects", "files")}  # a shard written before them
    totals.add(old)
    assert (totals.subjects, totals.bytes, totals.reused, totals.computed) == (40, 2000, {"caption": 8},
                                                                               {"caption": 8})
    assert totals.funnel_rows()[1] == {"stage": "caption", "in": 24, "rejected": 0, "out": 24, "reused": 8,
                                       "computed": 8}
    assert "reused" not in totals.funnel_rows()[0]
    text = funnel_markdown(totals, None)
    assert "| stage | in | rejected | out | reused | computed |" in text and "| caption | 24 | 0 | 24 | 8 | 8 |" in text
    assert "| decode | 30 | 6 | 24 |  |  |" in text
    plain = BuildTotals()
    plain.add(_shard(0, {"caption": 0}))
    plain_text = funnel_markdown(plain, None)  # nothing reused: today's table
    assert "| stage | in | rejected | out |\n" in plain_text and "reused" not in plain_text


@pytest.mark.parametrize(("hours", "shown"), [(None, "—"), (0.5 / 3600, "0.5 s"), (0.25, "15 min"), (3.0, "3 h"),
                                              (72.0, "3 days")])
def test_durations_read_as_seconds_minutes_hours_or_days(hours, shown):
    from tasks.forecast import duration

    assert duration(hours) == shown
