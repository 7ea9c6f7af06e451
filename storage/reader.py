"""Reads a built dataset: the metadata, its complete shards, and samples of a split, streaming.

Only complete shards (those with `_stats.json`) are read, one Parquet row group at a time, so memory stays
bounded by a row group whatever the dataset's size. The dataset root is a local path or an fsspec URL.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from lambda_eclipse.errors import UserError
from storage.fs import Location, arrow, is_file, is_local, join
from storage.layout import DATASET_JSON, complete_shards, read_json, shard_paths
from storage.schema import text_states

FIXED = ("token_ids", "attention_mask", "text_embedding", "target_embedding", "edge_embedding")


def load_dataset_meta(root: Location) -> dict:
    path = join(root, DATASET_JSON)
    if not is_file(path):
        raise UserError(f"{root} is not a λ-ECLIPSE dataset (no {DATASET_JSON}); "
                        "build one with `lambda-eclipse build-dataset`")
    return read_json(path)


def parquet_file(path: Location) -> pq.ParquetFile:
    """A Parquet file on any filesystem, opened for reading (its footer read; row groups on demand)."""
    filesystem, where = arrow(path)
    return pq.ParquetFile(where, filesystem=filesystem)


def _rows(batch, text_width: int) -> Iterator[dict[str, Any]]:
    columns = {}
    for name in batch.schema.names:
        col = batch.column(name)
        if name in FIXED:
            columns[name] = col.flatten().to_numpy(zero_copy_only=False).reshape(len(batch), -1)
        elif name == "text_hidden_states":
            columns[name] = text_states(col, text_width)
        elif name == "subject_embeddings":
            columns[name] = [np.asarray(v.values.flatten().to_numpy(zero_copy_only=False)).reshape(len(v), -1)
                             for v in col]
        else:
            columns[name] = col.to_pylist()
    for i in range(len(batch)):
        yield {name: values[i] for name, values in columns.items()}


def iter_samples(
    root: Location,
    split: str | None = None,
    columns: Sequence[str] | None = None,
    shards: Sequence[int] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield samples (dicts of numpy arrays and Python values) of `split` ("train"/"val"/None = all)."""
    meta = load_dataset_meta(root)
    text_width = int(meta["text_width"])
    wanted = list(columns) if columns is not None else None
    if wanted is not None and split is not None and "split" not in wanted:
        wanted.append("split")
    for shard in shards if shards is not None else complete_shards(root):
        with parquet_file(shard_paths(root, shard)["parquet"]) as parquet:
            # Arrow's threads only for local files: a remote file's Python buffers must be released on this thread
            # (storage.fs.arrow)
            for batch in parquet.iter_batches(columns=wanted, use_threads=is_local(root)):
                for row in _rows(batch, text_width):
                    if split is None or row["split"] == split:
                        yield row
