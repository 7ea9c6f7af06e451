"""Paths of the dataset layout (docs/shard-contract.md) and the completeness rule.

The dataset root is a local path or an fsspec URL (`storage/fs.py`). Locally every file is written under a
temporary name and renamed into place, so no partial file ever carries a final name. Object stores have no rename
(s3fs's `mv` is a copy and a delete); there a file is written under its final name — an S3 or GCS object appears
whole when its upload completes, a memory:// file is visible as it is written. On all of them `_stats.json` is
written last and is the only thing that makes a shard count: readers trust only shards that have it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from storage.fs import Location, is_file, is_local, join, location, open_file, resolve

DATASET_JSON = "dataset.json"
SHARDS = "shards"
HASHES = "hashes"  # hashes/NNNNN.parquet: each input's content hash, pHash and pixels (the duplicates index)
COPIES = "copies"  # copies/NNNNN.parquet: a unit's inputs that copy another input, and which (tasks/copies.py)
FAILED = "failed"  # failed/NNNNN.json: a unit that failed every try (error, attempts, node, time), until it completes
# the files `_stats.json` lists, written before it; `kept` (the model outputs, storage/kept.py) since datasets keep them
DATA_FILES = ("parquet", "tar", "rejects", "kept")


def shard_names(shard: int) -> dict[str, str]:
    return {
        "parquet": f"{shard:05d}.parquet",
        "tar": f"{shard:05d}.tar",
        "rejects": f"{shard:05d}_rejects.parquet",
        "kept": f"{shard:05d}_kept.parquet",
        "stats": f"{shard:05d}_stats.json",
    }


def shard_paths(root: Location, shard: int) -> dict[str, Location]:
    """The shard's files: Paths under a local root, URLs under a remote one."""
    base = join(root, SHARDS)
    return {kind: join(base, name) for kind, name in shard_names(shard).items()}


def is_complete(root: Location, shard: int) -> bool:
    """A shard is complete if and only if its `_stats.json` exists (it is written last)."""
    return is_file(shard_paths(root, shard)["stats"])


def complete_shards(root: Location) -> list[int]:
    fs, base = resolve(join(root, SHARDS))
    if not fs.isdir(base):
        return []
    names = (entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(base, detail=False))
    return sorted(int(name.split("_")[0]) for name in names if name.endswith("_stats.json"))


def failure_path(root: Location, shard: int) -> Location:
    return join(root, FAILED, f"{shard:05d}.json")


def write_parquet_atomic(path: Location, table) -> None:
    """A Parquet file written under a staging name and published (a reader never sees half of it)."""
    import pyarrow.parquet as pq

    fs, base = resolve(location(path))
    fs.makedirs(base.rsplit("/", 1)[0], exist_ok=True)
    staged = staging_path(path)
    with open_file(staged, "wb") as f:
        pq.write_table(table, f)
    publish(staged, path)


def record_failure(root: Location, shard: int, record: dict[str, Any]) -> None:
    fs, base = resolve(join(root, FAILED))
    fs.makedirs(base, exist_ok=True)
    write_json_atomic(failure_path(root, shard), record)


def clear_failure(root: Location, shard: int) -> None:
    """The unit's failure record, once its shard is complete."""
    fs, path = resolve(failure_path(root, shard))
    if fs.isfile(path):
        fs.rm_file(path)


def failed_units(root: Location) -> list[int]:
    """Shards whose unit failed in an earlier run and has not completed since."""
    fs, base = resolve(join(root, FAILED))
    if not fs.isdir(base):
        return []
    names = (entry.rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(base, detail=False))
    return sorted(int(name[:-5]) for name in names if name.endswith(".json") and name[:-5].isdigit())


def tmp_path(path: Path) -> Path:
    """Temporary sibling name: never matched by the contract's globs, renamed into place when done."""
    return path.with_name(f".{path.name}.tmp")


def staging_path(path: Location) -> Location:
    """Where a file is written before `publish` makes it `path`: a temporary sibling locally, `path` itself on
    stores without rename."""
    path = location(path)
    return tmp_path(path) if isinstance(path, Path) else path


def publish(staged: Location, path: Location) -> None:
    """Make the file written at `staging_path(path)` visible as `path` (an atomic rename where one exists)."""
    if staged != path:
        os.replace(staged, path)


def write_json_atomic(path: Location, data: Any) -> None:
    path = location(path)
    staged = staging_path(path)
    with open_file(staged, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        if is_local(path):  # on disk before the rename makes it visible
            f.flush()
            os.fsync(f.fileno())
    publish(staged, path)


def file_digest(path: Location) -> dict[str, Any]:
    """sha256 and size of a file, in one read of what the filesystem actually holds."""
    digest, size = hashlib.sha256(), 0
    with open_file(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return {"sha256": digest.hexdigest(), "bytes": size}


def sha256_file(path: Location) -> str:
    return file_digest(path)["sha256"]


def read_json(path: Location) -> Any:
    with open_file(path, "r") as f:
        return json.load(f)
