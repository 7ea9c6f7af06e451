"""Paths of the dataset layout (shared/DESIGN.md, shard contract) and the completeness rule."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

DATASET_JSON = "dataset.json"
SHARDS = "shards"


def shard_paths(root: str | Path, shard: int) -> dict[str, Path]:
    base = Path(root) / SHARDS
    return {
        "parquet": base / f"{shard:05d}.parquet",
        "tar": base / f"{shard:05d}.tar",
        "rejects": base / f"{shard:05d}_rejects.parquet",
        "stats": base / f"{shard:05d}_stats.json",
    }


def is_complete(root: str | Path, shard: int) -> bool:
    """A shard is complete if and only if its `_stats.json` exists (it is written last, atomically)."""
    return shard_paths(root, shard)["stats"].is_file()


def complete_shards(root: str | Path) -> list[int]:
    base = Path(root) / SHARDS
    if not base.is_dir():
        return []
    return sorted(int(p.name.split("_")[0]) for p in base.glob("*_stats.json"))


def tmp_path(path: Path) -> Path:
    """Temporary sibling name: never matched by the contract's globs, renamed into place when done."""
    return path.with_name(f".{path.name}.tmp")


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = tmp_path(path)
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)
