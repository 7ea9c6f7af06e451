"""`DIR/manifest.parquet`: the dataset's work units, one row per shard (kind, input, file list with sizes,
fingerprint, the share of a tar's samples kept). Written by the flow after planning and before any shard is built,
so that a rerun, even after a crash, keeps every unit's boundaries and shard number, and new inputs become new units
after them.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from storage.fs import Location, arrow, is_file, join, open_file
from storage.layout import publish, staging_path
from storage.sources import WorkUnit

MANIFEST = "manifest.parquet"
SCHEMA = pa.schema(
    [
        ("shard", pa.int64()),
        ("kind", pa.string()),
        ("root", pa.string()),
        ("files", pa.list_(pa.string())),
        ("sizes", pa.list_(pa.int64())),
        ("start", pa.int64()),
        ("fingerprint", pa.string()),
        ("fraction", pa.float64()),  # absent in manifests written before samples: 1.0
    ]
)


def manifest_path(root: Location) -> Location:
    return join(root, MANIFEST)


def write_manifest(root: Location, units: list[WorkUnit]) -> None:
    table = pa.Table.from_pydict(
        {
            "shard": [u.shard for u in units],
            "kind": [u.kind for u in units],
            "root": [u.root for u in units],
            "files": [[f for f, _ in u.files] for u in units],
            "sizes": [[s for _, s in u.files] for u in units],
            "start": [u.start for u in units],
            "fingerprint": [u.fingerprint() for u in units],
            "fraction": [u.fraction for u in units],
        },
        schema=SCHEMA,
    )
    path = manifest_path(root)
    staged = staging_path(path)
    filesystem, where = arrow(staged)
    pq.write_table(table, where, filesystem=filesystem)
    publish(staged, path)


def read_manifest(root: Location) -> list[WorkUnit] | None:
    """The units of an earlier run into `root`, or None when there was none."""
    path = manifest_path(root)
    if not is_file(path):
        return None
    # Its bytes first, then Arrow parses them on this thread: no Arrow thread ever holds a Python file or buffer of
    # the read, so a command that exits right after it (a dry run) cannot abort at exit (storage.fs.arrow). A
    # PyFileSystem file read with use_threads=False still did, once in ~100 dry runs on a loaded machine.
    with open_file(path, "rb") as f:
        data = f.read()
    rows = pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False).to_pylist()
    return [
        WorkUnit(r["shard"], r["kind"], r["root"], list(zip(r["files"], r["sizes"], strict=True)), r["start"],
                 1.0 if r.get("fraction") is None else r["fraction"])
        for r in rows
    ]
