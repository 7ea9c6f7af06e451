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
