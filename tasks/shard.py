"""Builds one shard from one work unit: run the stages, stream every sample into the shard writer."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from lambda_eclipse.config import BuildConfig
from lambda_eclipse.sample import Sample
from lambda_eclipse.storage.schema import feature_schema
from lambda_eclipse.storage.shard_writer import ShardWriter
from lambda_eclipse.storage.sources import WorkUnit
from lambda_eclipse.tasks.pipeline import STAGE_NAMES


class UnitStream:
    """One pipeline over the samples of many units, consumed unit by unit, in order.

    Models load once per actor for the whole run and the pipeline never drains between shards. Once a unit
    fails midway the shared stream's position is lost, so that unit's retry and every later unit get a
    pipeline of their own.
    """

    def __init__(self, units: list[WorkUnit], start: Callable[[list[Sample]], Iterator[Sample]]):
        self._start = start
        self._shared = start([s for u in units for s in u.samples])
        self._broken = False

    def close(self) -> None:
        """Stop the shared pipeline (before Ray shuts down, so that it stops cleanly)."""
        self._shared.close()

    def run(self, samples: list[Sample]) -> Iterator[Sample]:
        if self._broken:
            yield from self._start(samples)
            return
        finished = False
        try:
            for expected in samples:
                got = next(self._shared)
                if got.key != expected.key:
                    raise RuntimeError(f"pipeline order broken: expected sample {expected.key}, got {got.key}")
                yield got
            finished = True
        finally:
            self._broken = self._broken or not finished


def build_shard(
    unit: WorkUnit,
    root: str | Path,
    cfg: BuildConfig,
    meta: dict,
    run: Callable[[list[Sample]], Iterator[Sample]],
    on_sample: Callable[[Sample], None] | None = None,
) -> dict:
    """Write shard `unit.shard` from `run(unit.samples)`; returns its stats. Nothing is left on failure."""
    schema = feature_schema(meta["embed_dim"], meta["text_width"])
    writer = ShardWriter(root, unit.shard, schema, cfg.split.train_fraction, STAGE_NAMES)
    try:
        for sample in run(unit.samples):
            writer.add(sample)
            if on_sample is not None:
                on_sample(sample)
        if writer.inputs != len(unit.samples):
            raise RuntimeError(f"shard {unit.shard}: {len(unit.samples)} inputs but {writer.inputs} results")
        return writer.close({"description": unit.description, "fingerprint": unit.fingerprint()})
    except BaseException:
        writer.abort()
        raise
