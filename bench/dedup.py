"""Benchmark of `lambda-eclipse dedup` (tasks/semantic_dedup.py). Prints numbers; asserts nothing.

Writes `--rows` synthetic d = `--dim` float32 photo embeddings (default 1M × 1280, 5 GB) as feature shards of
`--shard-rows` rows — only the columns dedup reads (`key`, `target_embedding`) and each shard's `_stats.json` — one
shard at a time, so nothing holds them all. A `--dup-fraction` of the rows are planted near-duplicates of a row of the
shard before (cosine uniform in [0.96, 0.995]); the rows are random directions near one of 2,000 topics (cosine ≈ 0.6
with it, ≈ 0.36 with another row of its topic, ≈ 0 across topics), as CLIP embeddings gather. Then runs
`semantic_dedup` on a local Ray of this machine's CPUs (or RAY_ADDRESS's cluster) and reports
the wall time per step, each step's largest peak RSS of a Ray worker (ru_maxrss, reported by every task), the
recall of the planted pairs (a pair counts when one of them is marked as a duplicate of the other) and the marks
that are not planted pairs.

    python bench/dedup.py [--rows 1000000] [--dim 1280] [--shard-rows 10000] [--dup-fraction 0.02] [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lambda_eclipse.ray_session import ray_session
from storage.layout import shard_paths, write_json_atomic
from tasks.semantic_dedup import DEFAULT_THRESHOLD, semantic_dedup

TOPICS = 2000  # like CLIP embeddings, the rows gather around directions (a topic each); unrelated rows stay far apart


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def write(root: Path, rows: int, dim: int, shard_rows: int, dup_fraction: float) -> dict[str, str]:
    """The dataset; returns the planted pairs (duplicate key → the key it copies)."""
    (root / "shards").mkdir(parents=True)
    write_json_atomic(root / "dataset.json", {"embed_dim": dim, "text_width": dim, "profile": "bench"})
    planted, previous = {}, None
    topics = unit(np.random.default_rng(6).standard_normal((TOPICS, dim), dtype=np.float32))
    for shard, start in enumerate(range(0, rows, shard_rows)):
        n = min(shard_rows, rows - start)
        rng = np.random.default_rng([7, shard])
        noise = unit(rng.standard_normal((n, dim), dtype=np.float32))
        x = unit(0.6 * topics[rng.integers(0, TOPICS, n)] + 0.8 * noise)  # cosine ≈ 0.6 with its topic
        keys = [f"{start + i:016x}" for i in range(n)]
        dups = np.empty(0, np.int64)
        if previous is not None:
            dups = rng.choice(n, int(n * dup_fraction), replace=False)
            bases = rng.choice(previous[2], len(dups), replace=False)  # not a planted duplicate itself
            cosine = rng.uniform(0.96, 0.995, (len(dups), 1)).astype(np.float32)
            base = previous[1][bases]
            noise = rng.standard_normal((len(dups), dim), dtype=np.float32)
            noise = unit(noise - (noise * base).sum(axis=1, keepdims=True) * base)
            x[dups] = cosine * base + np.sqrt(1 - cosine**2) * noise
            planted |= {keys[d]: previous[0][b] for d, b in zip(dups, bases)}
        column = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), dim)
        table = pa.table({"key": keys, "target_embedding": column}).replace_schema_metadata({"embed_dim": str(dim)})
        paths = shard_paths(root, shard)
        pq.write_table(table, paths["parquet"], row_group_size=256, compression="none",
                       use_dictionary=False)
        write_json_atomic(paths["stats"], {"shard": shard, "accepted": n, "splits": {"train": n}})
        previous = (keys, x, np.setdiff1d(np.arange(n), dups))
    return planted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--shard-rows", type=int, default=10_000)
    parser.add_argument("--dup-fraction", type=float, default=0.02)
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--out", type=Path, default=None, help="where to write the dataset [default: a temp dir]")
    args = parser.parse_args()
    root = (args.out or Path(tempfile.mkdtemp(prefix="bench-dedup-"))) / "data"
    shutil.rmtree(root, ignore_errors=True)
    clock = time.monotonic()
    planted = write(root, args.rows, args.dim, args.shard_rows, args.dup_fraction)
    print(f"wrote {args.rows} × {args.dim} embeddings ({args.rows * args.dim * 4 / 2**30:.1f} GiB) with "
          f"{len(planted)} planted duplicates in {time.monotonic() - clock:.0f} s", flush=True)
    with ray_session():
        import ray

        ray.get(ray.remote(lambda: None).remote())  # Ray is up before the clock starts
        clock = time.monotonic()
        result = semantic_dedup(root, args.threshold, log=lambda line: print("  " + line, flush=True))
        wall = time.monotonic() - clock
    marked = {row["key"]: row["match"] for rows in result.marks.values() for row in rows}
    found = sum(marked.get(dup) == base or marked.get(base) == dup for dup, base in planted.items())
    other = sum(1 for key, match in marked.items() if planted.get(key) != match and planted.get(match) != key)
    print(result.line(root))
    print(f"rows {args.rows}, d {args.dim}, clusters {result.clusters}, wall {wall:.0f} s "
          f"({args.rows / wall:,.0f} rows/s); steps: "
          + ", ".join(f"{step} {seconds:.0f} s" for step, seconds in result.seconds.items()))
    print("peak RSS per worker (MB): " + ", ".join(f"{step} {mb:,.0f}" for step, mb in result.peak_rss_mb.items()))
    print(f"recall of planted pairs: {found}/{len(planted)} = {found / max(len(planted), 1):.4f}; "
          f"marks that are not planted pairs: {other}")
    if args.out is None:
        shutil.rmtree(root.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
