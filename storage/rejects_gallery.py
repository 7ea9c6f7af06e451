"""The rejects gallery of a build's summary: for each stage that rejected anything, a few rejected photos as small
thumbnails with their reasons, so that a user tuning a filter's threshold sees what it removes.

The thumbnails were made on the workers (storage/thumbnail.py) and stored in the shards' rejects files; this reads
the files of the few shards the build's totals kept for each stage (storage/build_totals.py), in shard order, only
until every stage has its rows (never every shard of a large build), and embeds
the JPEG bytes as data URIs: the flow decodes no image, and the Prefect UI shows the gallery on any machine.
"""

from __future__ import annotations

import base64
import re

import pyarrow.parquet as pq

from storage.build_totals import GALLERY_SHARDS, BuildTotals
from storage.fs import Location, is_file, open_file
from storage.layout import shard_paths

PER_STAGE = GALLERY_SHARDS  # rejects shown per stage: the totals keep as many shards, each with one at least


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


def gallery_rows(root: Location, totals: BuildTotals, per_stage: int = PER_STAGE) -> dict[str, list[dict]]:
    """Up to `per_stage` rejects of each stage that rejected anything, in stage order, those with a thumbnail first
    within each shard."""
    wanted = {stage: n for stage, n in totals.rejected_by_stage().items() if n}
    rows: dict[str, list[dict]] = {stage: [] for stage in wanted}
    for shard in sorted(set().union(*totals.gallery_shards.values())):
        stages = [st for st, kept in totals.gallery_shards.items() if shard in kept and len(rows[st]) < per_stage]
        path = shard_paths(root, shard)["rejects"]
        if not stages or not is_file(path):
            continue
        for row in sorted(_read(path), key=lambda r: r["thumbnail"] is None):
            if row["stage"] in stages and len(rows[row["stage"]]) < per_stage:
                rows[row["stage"]].append(row)
        if all(len(r) >= min(per_stage, wanted[st]) for st, r in rows.items()):
            break
    return rows


def gallery_markdown(root: Location, totals: BuildTotals, per_stage: int = PER_STAGE) -> str:
    """The gallery as markdown ("" when nothing was rejected)."""
    rows = gallery_rows(root, totals, per_stage)
    if not rows:
        return ""
    counts = totals.rejected_by_stage()
    lines = ["## Rejects gallery", "",
             f"Up to {per_stage} rejects of each stage that rejected anything; every reject is listed in "
             "`shards/NNNNN_rejects.parquet`."]
    for stage, shown in rows.items():
        lines += ["", f"### {stage}: {counts[stage]} rejected", "", "| photo | input | reason |", "|---|---|---|"]
        lines += [f"| {_image(r)} | `{_cell(r['source'])}` | {_cell(r['reason'])} |" for r in shown]
    return "\n".join(lines)
