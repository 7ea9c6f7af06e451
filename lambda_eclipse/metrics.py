"""build-dataset's pipeline metrics, recorded with `ray.util.metrics` where the work happens (unit tasks, model actors)
and exported by Ray's metrics agent on every node: wherever the cluster's Prometheus scrapes Ray, it finds these too
(docs/operate.md, Monitoring; deploy/grafana-dashboard.json charts them).

Ray prefixes every name with `ray_` when it exports it, and Prometheus counters end in `_total`: the counter
`lambda_eclipse_stage_in` is scraped as `ray_lambda_eclipse_stage_in_total`, the histogram
`lambda_eclipse_batch_seconds` as `ray_lambda_eclipse_batch_seconds_bucket|_sum|_count` (`exported()` gives each name
as scraped).

The funnel counters (stage_in, stage_out, stage_rejects, samples, units_done, bytes_read, bytes_written) are added
from each finished shard's stats on the worker that wrote it, so once exported they equal the funnel of the shards
this Ray session built (`summary.md` for a fresh build): exact and one call per shard. Batch seconds, batch samples
and busy seconds come from each model actor's batches as they finish (live, before any shard is done). Gauges are
per process: `units_in_flight` is 1 on a worker while it builds a unit, `stage_actors` 1 on each live model actor;
Ray drops a dead process's gauges after two report intervals, so their sums are what runs now.

Recording is a no-op outside Ray (a stage run in a test, a process that never joined a cluster).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

PREFIX = "lambda_eclipse_"
NAMESPACE = "ray_"  # what Ray's exporter puts before every name
METRICS_PORT_ENV = "LAMBDA_ECLIPSE_METRICS_PORT"  # the local Ray's metrics export port (lambda_eclipse/ray_session)
# Seconds, from 10 ms (a tiny model's batch) to 10 minutes (a large batch of SAM ViT-H on CPU).
BATCH_SECONDS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


@dataclass(frozen=True)
class Metric:
    name: str  # without PREFIX
    kind: str  # counter | gauge | histogram
    description: str
    tags: tuple[str, ...] = ()

    @property
    def full_name(self) -> str:
        return PREFIX + self.name


METRICS: tuple[Metric, ...] = (
    Metric("stage_in", "counter", "samples that reached each stage (finished shards)", ("stage",)),
    Metric("stage_out", "counter", "samples each stage passed on (finished shards)", ("stage",)),
    Metric("stage_rejects", "counter", "samples each stage rejected (finished shards)", ("stage",)),
    Metric("samples", "counter", "inputs that left the pipeline, by outcome: accepted or rejected (finished shards)",
           ("outcome",)),
    Metric("units_done", "counter", "work units (shards) written"),
    Metric("bytes_read", "counter", "input bytes of the work units written (their files' or tar's sizes)"),
    Metric("bytes_written", "counter", "bytes of the shard files written (parquet, tar, rejects)"),
    Metric("units_in_flight", "gauge", "1 on each worker while it builds a work unit: their sum is the units running"),
    Metric("batch_seconds", "histogram", "seconds a model actor took for one batch of its stage", ("stage",)),
    Metric("batch_samples", "counter", "samples the model actors of each stage processed (live, per batch)",
           ("stage",)),
    Metric("actor_busy_seconds", "counter", "seconds the model actors of each stage spent on batches: its rate over "
           "the stage's actors is their busy fraction", ("stage",)),
    Metric("stage_actors", "gauge", "1 on each live model actor of a stage: their sum is the stage's actors",
           ("stage",)),
    Metric("units_remaining", "gauge", "work units (shards) the running build has still to write (set by its flow)"),
)
BY_NAME = {m.name: m for m in METRICS}


def exported(metric: Metric) -> list[str]:
    """The names Prometheus scrapes for `metric` from Ray's exporter."""
    base = NAMESPACE + metric.full_name
    if metric.kind == "counter":
        return [base + "_total"]
    if metric.kind == "histogram":
        return [base + suffix for suffix in ("_bucket", "_sum", "_count")]
    return [base]


def exported_names() -> set[str]:
    return {name for m in METRICS for name in exported(m)}


_made: dict[str, Any] = {}  # this process's ray.util.metrics objects, made on first use


def _metric(name: str):
    if name not in _made:
        from ray.util import metrics

        m = BY_NAME[name]
        if m.kind == "counter":
            _made[name] = metrics.Counter(m.full_name, description=m.description, tag_keys=m.tags)
        elif m.kind == "gauge":
            _made[name] = metrics.Gauge(m.full_name, description=m.description, tag_keys=m.tags)
        else:
            _made[name] = metrics.Histogram(m.full_name, description=m.description, boundaries=list(BATCH_SECONDS),
                                            tag_keys=m.tags)
    return _made[name]


def _in_ray() -> bool:
    import sys

    if "ray" not in sys.modules:  # never import Ray just to find out
        return False
    import ray

    return ray.is_initialized()


def _inc(name: str, value: float, **tags: str) -> None:
    if value:
        _metric(name).inc(value, tags=tags or None)


def shard_done(stats: dict, bytes_read: int) -> None:
    """A finished shard's funnel, samples, bytes: on the worker that wrote it, from the stats it wrote."""
    if not _in_ray():
        return
    for step in stats["funnel"]:
        stage = step["stage"]
        _inc("stage_in", step["in"], stage=stage)
        _inc("stage_rejects", step["rejected"], stage=stage)
        _inc("stage_out", step["in"] - step["rejected"], stage=stage)
    _inc("samples", stats["accepted"], outcome="accepted")
    _inc("samples", stats["rejected"], outcome="rejected")
    _inc("units_done", 1)
    _inc("bytes_read", bytes_read)
    _inc("bytes_written", sum(f.get("bytes", 0) for f in stats.get("files", {}).values()))


@contextlib.contextmanager
def unit_in_flight() -> Iterator[None]:
    """`units_in_flight` is 1 on this worker while the block runs."""
    if not _in_ray():
        yield
        return
    gauge = _metric("units_in_flight")
    gauge.set(1)
    try:
        yield
    finally:
        gauge.set(0)


def batch_done(stage: str, samples: int, seconds: float) -> None:
    """One batch of a model stage, on its actor."""
    if not _in_ray():
        return
    _metric("batch_seconds").observe(seconds, tags={"stage": stage})
    _inc("batch_samples", samples, stage=stage)
    _inc("actor_busy_seconds", seconds, stage=stage)


def actor_up(stage: str) -> None:
    """This process is a live model actor of `stage` (set once, where the actor sets its stage up)."""
    if _in_ray():
        _metric("stage_actors").set(1, tags={"stage": stage})


def units_remaining(count: int) -> None:
    """The build's flow: units still to write (with the units_done rate, the ETA)."""
    if _in_ray():
        _metric("units_remaining").set(count)


def metrics_port() -> int | None:
    """The local Ray's metrics export port from $LAMBDA_ECLIPSE_METRICS_PORT (`build-dataset --metrics-port` sets
    it), or None."""
    value = os.environ.get(METRICS_PORT_ENV, "").strip()
    if not value:
        return None
    from lambda_eclipse.errors import UserError

    if not value.isdigit() or not 0 < int(value) < 65536:
        raise UserError(f"{METRICS_PORT_ENV}={value!r}: a TCP port (1–65535)")
    return int(value)
