"""Pipeline metrics without Ray: the names as Prometheus scrapes them, the Grafana dashboard over them, and what the
flow says about a running build (rate, ETA, busy fractions) from per-shard stats."""

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flows.build_watch import BuildWatch, duration
from flows.shard_table import busy_columns
from lambda_eclipse import metrics
from storage.sources import WorkUnit

DASHBOARD = Path(__file__).parents[1] / "deploy" / "grafana-dashboard.json"
PROMQL_WORDS = {"sum", "by", "rate", "histogram_quantile", "le", "stage", "outcome", "SessionName", "session",
                "rate_interval", "label_values", "m"}


def _queries(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)]
    return exprs


def test_the_dashboard_loads_and_every_query_names_a_registered_metric():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["panels"] and dashboard["schemaVersion"] >= 36
    registered = metrics.exported_names()
    charted = set()
    for expr in _queries(dashboard):
        names = set(re.findall(r"\bray_lambda_eclipse_\w+", expr))
        assert names, f"a query that names no pipeline metric: {expr}"
        assert names <= registered, f"{expr}: {sorted(names - registered)} are not registered in lambda_eclipse/metrics"
        charted |= names
    # every metric the code records is on the dashboard (a histogram through one of its series)
    assert {m.name for m in metrics.METRICS if not set(metrics.exported(m)) & charted} == set()
    for panel in dashboard["panels"]:  # importable as is: the data source is the dashboard's variable
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_exported_names_follow_rays_exporter():
    assert metrics.exported(metrics.BY_NAME["stage_in"]) == ["ray_lambda_eclipse_stage_in_total"]
    assert metrics.exported(metrics.BY_NAME["units_in_flight"]) == ["ray_lambda_eclipse_units_in_flight"]
    assert metrics.exported(metrics.BY_NAME["batch_seconds"]) == [
        "ray_lambda_eclipse_batch_seconds_bucket", "ray_lambda_eclipse_batch_seconds_sum",
        "ray_lambda_eclipse_batch_seconds_count"]
    assert all(m.full_name.startswith("lambda_eclipse_") for m in metrics.METRICS)


def test_recording_outside_ray_does_nothing():
    metrics.shard_done({"funnel": [{"stage": "decode", "in": 2, "rejected": 1}], "accepted": 1, "rejected": 1}, 10)
    metrics.batch_done("caption", 4, 0.5)
    metrics.actor_up("caption")
    metrics.units_remaining(3)
    with metrics.unit_in_flight():
        pass


def test_the_metrics_port_comes_from_the_environment(monkeypatch):
    from lambda_eclipse.errors import UserError

    monkeypatch.delenv(metrics.METRICS_PORT_ENV, raising=False)
    assert metrics.metrics_port() is None
    monkeypatch.setenv(metrics.METRICS_PORT_ENV, "9100")
    assert metrics.metrics_port() == 9100
    monkeypatch.setenv(metrics.METRICS_PORT_ENV, "http")
    with pytest.raises(UserError, match="LAMBDA_ECLIPSE_METRICS_PORT='http': a TCP port"):
        metrics.metrics_port()


def test_a_bad_metrics_port_is_refused_by_the_command_line(capsys):
    from flows.cli import main

    with pytest.raises(SystemExit):
        main(["build-dataset", "--input", "x", "--output", "y", "--metrics-port", "70000"])
    assert "'70000' is not a TCP port (1–65535)" in capsys.readouterr().err


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _unit(shard: int, images: int) -> WorkUnit:
    return WorkUnit(shard, "folder", "/in", [(f"{shard}_{i}.jpg", 100) for i in range(images)])


def _stats(inputs: int, accepted: int, caption: float, masks: float) -> dict:
    return {"inputs": inputs, "accepted": accepted, "stage_seconds": {"decode": 1.0, "caption": caption,
                                                                      "masks": masks}}


def test_rate_eta_and_busy_fractions_over_the_last_minutes():
    clock = Clock()
    units = [_unit(i, 10) for i in range(4)]
    watch = BuildWatch(units, lambda: {"caption": 1, "masks": 2}, window=300, clock=clock)
    assert watch.describe(0, 4) == "0/4 shards complete"
    clock.now += 100
    watch.shard_done(units[0], _stats(10, 4, caption=50.0, masks=100.0))
    assert watch.rates() == (0.1, 0.04)  # 10 images, 4 accepted in the 100 s since the start
    assert watch.eta() == pytest.approx(300)  # 30 images left at 0.1/s
    assert watch.busy() == {"caption": 0.5, "masks": 0.5}  # masks: 100 s over 2 actors × 100 s
    assert busy_columns(watch.busy()) == {"busy: caption": "50%", "busy: masks": "50%"}
    at = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    assert watch.describe(1, 4, now=at) == ("1/4 shards complete · 0.10 images/s, 0.04 accepted samples/s over the "
                                            "last 5 min · ETA 5 min (at 2026-01-01 12:05 UTC)")
    clock.now += 400  # the first shard leaves the 5-minute window
    watch.shard_done(units[1], _stats(10, 10, caption=30.0, masks=0.0))
    assert watch.rates() == (10 / 300, 10 / 300)
    assert watch.busy() == {"caption": 0.1, "masks": 0.0}
    watch.shard_done(units[2], _stats(10, 10, caption=0.0, masks=0.0))
    watch.shard_done(units[3], _stats(10, 10, caption=0.0, masks=0.0))
    assert watch.eta() == 0.0 and "ETA" not in watch.describe(4, 4)


def test_tar_units_are_timed_by_bytes():
    clock = Clock()
    tars = [WorkUnit(i, "tar", f"/in/{i}.tar", [("", 1000)]) for i in range(3)]
    watch = BuildWatch(tars, dict, clock=clock)
    clock.now += 10
    watch.shard_done(tars[0], _stats(7, 7, 0.0, 0.0))
    assert watch.eta() == pytest.approx(20)  # 2000 bytes left at 100 bytes/s
    assert watch.busy() == {}


@pytest.mark.parametrize(("seconds", "text"), [(42, "42 s"), (600, "10 min"), (3 * 3600 + 300, "3 h 05 min"),
                                               (5 * 86400, "5.0 days")])
def test_durations_read_as_a_person_says_them(seconds, text):
    assert duration(seconds) == text
