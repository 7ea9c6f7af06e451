"""The duplicates pass: which inputs copy another, decided before the units run, so that no filter or model runs on a
copy and the copy kept never depends on timing.

1. Hashing, one Ray task per unit: each input's content hash (sha256 of its bytes) and pHash (tasks/phash.py, of a
   small DCT-domain decode), and its pixels, in `DIR/hashes/NNNNN.parquet`. A unit is hashed once: a growing dataset
   hashes only its new units and checks them against the index of the old ones.
2. Grouping, one Ray task over every unit's hashes: photos whose pHashes are within `duplicates.max_distance` bits
   are copies. Candidate pairs come from banding (the 64 bits cut into max_distance + 1 bands: two hashes within the
   distance agree on at least one band, so only photos sharing a band value are compared, never all pairs); copies
   chain into groups. Each group keeps one photo: one in a shard already built if any (a built shard is never
   rewritten), else the one with the most pixels, ties broken by the smallest key. So the same inputs give the same
   dataset whatever the cluster's size or the order units finish in.
3. Each unit to build gets its copies (`DIR/copies/NNNNN.parquet`: key, the kept key, distance, exact) and the
   duplicates stage (tasks/duplicates.py) rejects them right after decode, naming the kept key.

The grouping task holds the index (~40 bytes per input: 4 GB at 100M photos) in one worker.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage.fs import Location, is_file, join, read_bytes, remove, resolve
from storage.layout import COPIES, HASHES, write_parquet_atomic
from storage.sources import WorkUnit
from tasks.config import BuildConfig
from tasks.decode import BadImage, content_hash, small_photo
from tasks.phash import BITS, hamming_many, phash

HASH_SCHEMA = pa.schema([("key", pa.string()), ("content", pa.string()), ("phash", pa.uint64()),
                         ("pixels", pa.int64())])
COPY_SCHEMA = pa.schema([("key", pa.string()), ("copy_of", pa.string()), ("distance", pa.int32()),
                         ("exact", pa.bool_())])


def hashes_path(root: Location, shard: int) -> Location:
    return join(root, HASHES, f"{shard:05d}.parquet")


def copies_path(root: Location, shard: int) -> Location:
    return join(root, COPIES, f"{shard:05d}.parquet")


def hash_unit(unit: WorkUnit, root: Location, cfg: BuildConfig) -> int:
    """A Ray task: the unit's hashes file; returns its rows. An input that cannot be read or decoded has none (the
    build's decode stage rejects it with the reason)."""
    rows = []
    for sample in unit.iter_samples(cfg.input.extensions):
        try:
            data = sample.read()
            small, width, height = small_photo(data, cfg.decode.max_pixels)
        except (FileNotFoundError, IsADirectoryError, PermissionError, BadImage):
            continue
        rows.append({"key": sample.key, "content": content_hash(data), "phash": phash(small),
                     "pixels": width * height})
    write_parquet_atomic(hashes_path(root, unit.shard), pa.Table.from_pylist(rows, schema=HASH_SCHEMA))
    return len(rows)


def _bands(max_distance: int) -> list[tuple[int, int]]:
    """(shift, width) of each of max_distance + 1 bands covering the 64 bits."""
    count = max_distance + 1
    widths = [BITS // count + (i < BITS % count) for i in range(count)]
    shifts = np.cumsum([0, *widths[:-1]])
    return [(int(s), w) for s, w in zip(shifts, widths, strict=True)]


def _find(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = int(parent[i])
    return i


def group_copies(keys: np.ndarray, shards: np.ndarray, phashes: np.ndarray, contents: np.ndarray,
                 pixels: np.ndarray, built: np.ndarray, max_distance: int) -> pa.Table:
    """The copies among the inputs (parallel arrays; `built`: the input's shard is complete), as rows of
    (key, shard, copy_of, distance, exact): every photo of a group but the one kept (module docstring)."""
    unique, inverse = np.unique(phashes.astype(np.uint64), return_inverse=True)
    parent = np.arange(len(unique))
    for shift, width in _bands(max_distance) if max_distance > 0 else []:
        values = (unique >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        order = np.argsort(values, kind="stable")
        edges = np.flatnonzero(np.diff(values[order])) + 1
        for run in np.split(order, edges):
            for j in range(len(run) - 1):
                near = run[j + 1:][hamming_many(int(unique[run[j]]), unique[run[j + 1:]]) <= max_distance]
                for other in near:
                    a, b = _find(parent, int(run[j])), _find(parent, int(other))
                    if a != b:
                        parent[max(a, b)] = min(a, b)
    # each distinct hash's group, then every input's through its hash: one lookup per distinct hash, not per input
    group = np.array([_find(parent, i) for i in range(len(unique))], np.int64)[inverse]
    rows: dict[str, list] = {"key": [], "shard": [], "copy_of": [], "distance": [], "exact": []}
    order = np.argsort(group, kind="stable")
    for members in np.split(order, np.flatnonzero(np.diff(group[order])) + 1):
        if len(members) < 2:
            continue
        # kept: a built one first, then the most pixels, then the smallest key
        kept = min(members, key=lambda i: (not built[i], -int(pixels[i]), str(keys[i])))
        others = members[members != kept]
        distances = hamming_many(int(phashes[kept]), phashes[others].astype(np.uint64))
        for i, distance in zip(others, distances, strict=True):
            rows["key"].append(str(keys[i]))
            rows["shard"].append(int(shards[i]))
            rows["copy_of"].append(str(keys[kept]))
            rows["distance"].append(int(distance))
            rows["exact"].append(bool(contents[i] == contents[kept]))
    return pa.table({"key": pa.array(rows["key"], pa.string()), "shard": pa.array(rows["shard"], pa.int64()),
                     "copy_of": pa.array(rows["copy_of"], pa.string()),
                     "distance": pa.array(rows["distance"], pa.int32()), "exact": pa.array(rows["exact"], pa.bool_())})


def group_task(root: Location, shards: list[int], built: list[int], todo: list[int], max_distance: int) -> dict:
    """A Ray task: group the copies among every hashed unit of `shards`, write each unit of `todo` its copies file
    (removing a stale one), and return the counts."""
    tables = []
    for shard in shards:
        if is_file(hashes_path(root, shard)):
            table = pq.read_table(io.BytesIO(read_bytes(hashes_path(root, shard))))
            tables.append(table.append_column("shard", pa.array(np.full(table.num_rows, shard), pa.int64())))
    hashed = pa.concat_tables(tables) if tables else HASH_SCHEMA.append(pa.field("shard", pa.int64())).empty_table()
    shard_of = hashed["shard"].to_numpy()
    copies = group_copies(hashed["key"].to_numpy(zero_copy_only=False), shard_of, hashed["phash"].to_numpy(),
                          hashed["content"].to_numpy(zero_copy_only=False), hashed["pixels"].to_numpy(),
                          np.isin(shard_of, built), max_distance)
    by_shard = copies["shard"].to_numpy()
    for shard in todo:
        mine = copies.filter(pa.array(by_shard == shard)).select(COPY_SCHEMA.names)
        if mine.num_rows:
            write_parquet_atomic(copies_path(root, shard), mine)
        else:
            remove(copies_path(root, shard))
    return {"inputs": hashed.num_rows, "copies": copies.num_rows,
            "exact": int(np.count_nonzero(copies["exact"].to_numpy(zero_copy_only=False))),
            "in_this_run": int(np.count_nonzero(np.isin(by_shard, todo)))}


def read_copies(root: Location, shard: int) -> dict[str, str]:
    """The unit's inputs that copy another: key → what the duplicates stage's reject says of the kept one."""
    path = copies_path(root, shard)
    if not is_file(path):
        return {}
    rows = pq.read_table(io.BytesIO(read_bytes(path))).to_pylist()
    return {r["key"]: r["copy_of"] + (" (exact copy)" if r["exact"] else f" (pHash {r['distance']} bits apart)")
            for r in rows}


def hashed_shards(root: Location) -> set[int]:
    fs, base = resolve(join(root, HASHES))
    if not fs.isdir(base):
        return set()
    names = (str(entry).rstrip("/").rsplit("/", 1)[-1] for entry in fs.ls(base, detail=False))
    return {int(name[:5]) for name in names if name.endswith(".parquet") and name[:5].isdigit()}


def find_copies(units: list[WorkUnit], todo: list[WorkUnit], built: set[int], root: Location, cfg: BuildConfig,
                log) -> dict:
    """The duplicates pass over `units` (every unit of the dataset whose inputs are here) for the units of `todo`:
    hash the units not hashed yet, group, write each todo unit its copies. Returns the counts."""
    import ray

    hashed = hashed_shards(root)  # one listing, not one per unit
    missing = [u for u in units if u.shard not in hashed]
    if missing:
        task = ray.remote(num_cpus=1, max_retries=3)(hash_unit)
        refs = [task.remote(u, root, cfg) for u in missing]
        log.info("duplicates: hashed %d input(s) of %d unit(s) (the other %d were hashed by earlier runs)",
                 sum(ray.get(refs)), len(missing), len(units) - len(missing))
    grouping = ray.remote(num_cpus=1, max_retries=3)(group_task)
    counts = ray.get(grouping.remote(root, sorted(u.shard for u in units), sorted(built),
                                     sorted(u.shard for u in todo), cfg.duplicates.max_distance))
    log.info("duplicates: %d copies among %d inputs (%d exact); %d in the units this run builds, rejected at the "
             "duplicates stage", counts["copies"], counts["inputs"], counts["exact"], counts["in_this_run"])
    return counts
