"""Marks beside the shards: samples a later step found to be semantic duplicates (`lambda-eclipse dedup`) or benchmark
leaks (`lambda-eclipse decontaminate`). The shards are never rewritten; readers that honour the marks (the prior's
loader) skip the marked keys.

`DIR/marks/<set>/NNNNN.parquet` holds one shard's marks of one set (only shards with marks have a file), and
`DIR/marks/<set>/_summary.json`, written last, makes the set count: its counts and the parameters that made it. A new
run of the same step replaces the set: the summary is removed first, the shard files are rewritten, the summary goes
last, so a set without a summary is being written (or was left half-written) and readers take none of it.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

from storage.fs import Location, is_file, join, read_bytes, remove, resolve, write_bytes
from storage.layout import read_json, write_json_atomic

MARKS = "marks"
SUMMARY = "_summary.json"
DUPLICATES = "semantic_duplicates"  # lambda-eclipse dedup
LEAKS = "leaks"  # lambda-eclipse decontaminate
SCHEMA = pa.schema([
    ("key", pa.string()),  # the marked sample
    ("kind", pa.string()),  # "duplicate" | "leak"
    ("match", pa.string()),  # what it matches: the kept sample's key, or the benchmark image
    ("score", pa.float32()),  # cosine similarity of the embeddings (or 1 - Hamming/64 for a perceptual hash)
    ("detail", pa.string()),  # what of the sample matched, e.g. "photo" or "subject crop 1"
])


def marks_path(root: Location, name: str, shard: int | None = None) -> Location:
    return join(root, MARKS, name, SUMMARY if shard is None else f"{shard:05d}.parquet")


def write_marks(root: Location, name: str, by_shard: dict[int, list[dict]], summary: dict) -> None:
    """Replace the mark set `name` with `by_shard` (shard → rows of SCHEMA) and its `summary` (parameters, counts)."""
    fs, base = resolve(join(root, MARKS, name))
    remove(marks_path(root, name))  # the set does not count while it is rewritten
    if fs.isdir(base):
        for entry in fs.ls(base, detail=False):
            if str(entry).endswith(".parquet"):
                fs.rm_file(entry)
    fs.makedirs(base, exist_ok=True)
    for shard, rows in sorted(by_shard.items()):
        if rows:
            buffer = io.BytesIO()
            pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), buffer)
            write_bytes(marks_path(root, name, shard), buffer.getvalue())
    counts = {"marked": sum(len(rows) for rows in by_shard.values()),
              "shards": sorted(shard for shard, rows in by_shard.items() if rows)}
    write_json_atomic(marks_path(root, name), summary | counts)


def mark_sets(root: Location) -> dict[str, dict]:
    """Every complete mark set of the dataset: name → its summary."""
    fs, base = resolve(join(root, MARKS))
    if not fs.isdir(base):
        return {}
    names = (str(entry).rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(base, detail=False))
    return {name: read_json(marks_path(root, name)) for name in sorted(names) if is_file(marks_path(root, name))}


def shard_marks(root: Location, shard: int, sets: dict[str, dict]) -> pa.Table:
    """The marks of one shard in `sets` (name → summary, as `mark_sets` gives them), as one table of SCHEMA."""
    tables = [pq.read_table(io.BytesIO(read_bytes(marks_path(root, name, shard))))
              for name, summary in sets.items() if shard in summary.get("shards", [])]
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table()
