"""The rejects gallery of a build's summary: for each stage that rejected anything, a few rejected photos as small
thumbnails with their reasons, so that a user tuning a filter's threshold sees what it removes.

The thumbnails were made on the workers (storage/thumbnail.py) and stored in the shards' rejects files; this reads
those files, in shard order, only until every stage has its rows (never every shard of a large build), and embeds
the JPEG bytes as data URIs: the flow decodes no image, and the Prefect UI shows the gallery on any machine.
"""

from __future__ import annotations

import base64
import re

import pyarrow.parquet as pq

from storage.fs import Location, is_file, open_file
from storage.layout import shard_paths
from storage.report import merge_funnel

PER_STAGE = 6  # rejects shown per stage


def _cell(text: str) -> str:
    """Text that stays inside one markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _image(row: dict) -> str:
    if row["thumbnail"] is None:
        return "(no image)"
    alt = "rejected " + re.sub(r"[^\w.-]", "_", row["key"])
    return f"![{alt}](data:image/jpeg;base64,{base64.b64encode(row['thumbnail']).decode()})"


def _read(path: Location) -> list[dict]:
    with open_file(path, "rb") as f, pq.ParquetFile(f) as parquet:  # on this thread: remote files (storage/fs.py)
        table = parquet.read(use_threads=False)
    if "thumbnail" not in table.schema.names:  # a shard written before the gallery
        return [row | {"thumbnail": None} for row in table.to_pylist()]
    return table.to_pylist()


def gallery_rows(root: Location, stats: list[dict], per_stage: int = PER_STAGE) -> dict[str, list[dict]]:
    """Up to `per_stage` rejects of each stage that rejected anything, in stage order, those with a thumbnail first
    within each shard."""
    wanted = {r["stage"]: r["rejected"] for r in merge_funnel(stats) if r["rejected"]}
    rows: dict[str, list[dict]] = {stage: [] for stage in wanted}
    for s in sorted(stats, key=lambda s: s["shard"]):
        stages = [st for st, n in (s.get("rejected_by_stage") or {}).items() if n and len(rows.get(st, ())) < per_stage]
        path = shard_paths(root, s["shard"])["rejects"]
        if not stages or not is_file(path):
            continue
        for row in sorted(_read(path), key=lambda r: r["thumbnail"] is None):
            if row["stage"] in stages and len(rows[row["stage"]]) < per_stage:
                rows[row["stage"]].append(row)
        if all(len(r) >= min(per_stage, wanted[st]) for st, r in rows.items()):
            break
    return rows


def gallery_markdown(root: Location, stats: list[dict], per_stage: int = PER_STAGE) -> str:
    """The gallery as markdown ("" when nothing was rejected)."""
    rows = gallery_rows(root, stats, per_stage)
    if not rows:
        return ""
    counts = {r["stage"]: r["rejected"] for r in merge_funnel(stats)}
    lines = ["## Rejects gallery", "",
             f"Up to {per_stage} rejects of each stage that rejected anything; every reject is listed in "
             "`shards/NNNNN_rejects.parquet`."]
    for stage, shown in rows.items():
        lines += ["", f"### {stage}: {counts[stage]} rejected", "", "| photo | input | reason |", "|---|---|---|"]
        lines += [f"| {_image(r)} | `{_cell(r['source'])}` | {_cell(r['reason'])} |" for r in shown]
    return "\n".join(lines)
