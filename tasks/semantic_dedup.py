"""Semantic duplicates among a built dataset's accepted samples (SemDeDup, arXiv 2303.09540), marked beside the
shards (storage/marks.py, set `semantic_duplicates`); the shards are never rewritten.

The photos' CLIP embeddings (`target_embedding`, L2-normalised) are clustered with k-means, and within each cluster
the samples are taken in SemDeDup's order, least similar to their centroid first (ties by key): a sample whose cosine
with a sample kept before it reaches the threshold is marked as a duplicate of the most similar such kept sample, any
other is kept. So every mark names a kept sample, and no two kept samples of a cluster reach the threshold.

On Ray, in four steps, none of which holds all embeddings in one process:

1. sample: tasks over chunks of shards draw the k-means training sample by a hash of (seed, key) — the same sample
   whatever the shards' arrangement — at most MAX_SAMPLE embeddings;
2. train: one task runs faiss' spherical k-means on it (sorted by key), splits every cluster the sample expects to
   exceed MAX_CLUSTER rows with a second k-means, and packs the clusters into partitions of about PARTITION_ROWS rows;
3. assign: the chunk tasks read their shards again, assign each embedding to its nearest centroid and hand each
   partition its rows (an object per chunk and partition, Ray's shuffle);
4. deduplicate: one task per partition takes its clusters one at a time, in blocks of BLOCK rows against the samples
   kept so far, so a cluster's work is (its rows × the rows it keeps) and its memory one cluster's rows.

Only the marks come back to the caller, which writes them with `storage.marks.write_marks`.
"""

from __future__ import annotations

import hashlib
import math
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pyarrow.parquet as pq

from lambda_eclipse.errors import UserError
from storage.fs import Location, arrow
from storage.layout import complete_shards, read_json, shard_paths
from storage.marks import DUPLICATES, marks_path, write_marks
from storage.reader import load_dataset_meta

DEFAULT_THRESHOLD = 0.95  # cosine at or above which two photos are duplicates (SemDeDup's ε = 0.05 on LAION)
CHUNK_ROWS = 50_000  # rows of the shards one sample/assign task reads (≈ 256 MB of d = 1280 float32)
SAMPLE_PER_CLUSTER = 64  # k-means training points per centroid …
MAX_SAMPLE = 131_072  # … at most (≈ 670 MB at d = 1280, in the one training task)
MAX_CLUSTER = 16_384  # a cluster the sample expects to exceed this many rows is split by a second k-means
PARTITION_ROWS = 65_536  # rows one deduplicate task holds (≈ 335 MB at d = 1280), whole clusters each
BLOCK = 512  # rows of a cluster compared at a time …
KEPT_BLOCK = 16_384  # … against this many kept rows at a time (a 32 MB similarity block)
KMEANS_ITERATIONS = 20


def default_clusters(rows: int) -> int:
    """k = √N (SemDeDup used 50,000 clusters for 440M LAION images; √N keeps clusters ~√N rows), at least 1."""
    return max(1, min(rows, round(math.sqrt(rows))))


@dataclass
class DedupResult:
    samples: int  # accepted samples read
    marked: int  # samples marked as duplicates
    clusters: int  # clusters after big ones were split
    threshold: float
    seed: int
    seconds: dict[str, float] = field(default_factory=dict)  # per step
    peak_rss_mb: dict[str, float] = field(default_factory=dict)  # per step: the largest worker's peak RSS
    marks: dict[int, list[dict]] = field(default_factory=dict)  # shard → mark rows (storage.marks.SCHEMA)

    def line(self, root: Location) -> str:
        return (f"{self.marked} of {self.samples} samples marked as semantic duplicates (cosine ≥ {self.threshold}, "
                f"{self.clusters} clusters, seed {self.seed}): {marks_path(root, DUPLICATES)}")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _threads() -> None:
    """faiss' OpenMP threads: the CPUs Ray gave the task (faiss would take every core of the node)."""
    import faiss

    try:
        import ray

        cpus = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)) if ray.is_initialized() else 0
    except Exception:  # noqa: BLE001  (outside a Ray worker: leave faiss' default)
        cpus = 0
    if cpus >= 1:
        faiss.omp_set_num_threads(cpus)


def read_embeddings(root: Location, shard: int) -> tuple[np.ndarray, np.ndarray]:
    """A shard's keys and L2-normalised photo embeddings (float32), row group by row group."""
    filesystem, where = arrow(shard_paths(root, shard)["parquet"])
    keys, vectors = [], []
    with pq.ParquetFile(where, filesystem=filesystem) as parquet:
        dim = int(parquet.schema_arrow.metadata[b"embed_dim"])
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=["key", "target_embedding"], use_threads=False)
            keys.append(np.asarray(table["key"].to_pylist(), dtype=str))
            flat = table["target_embedding"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
            vectors.append(np.asarray(flat, np.float32).reshape(len(table), dim))
    if not keys:
        return np.empty(0, str), np.empty((0, dim), np.float32)
    x = np.concatenate(vectors)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return np.concatenate(keys), x


def key_uniform(seed: int, keys: Sequence[str] | np.ndarray) -> np.ndarray:
    """A number in [0, 1) per key, fixed by (seed, key) alone."""
    return np.array([int.from_bytes(hashlib.blake2b(f"{seed}:{k}".encode(), digest_size=8).digest(), "little")
                     for k in keys], np.float64) / 2.0**64


def sample_chunk(root: Location, shards: list[int], seed: int, rate: float) -> tuple[dict[str, Any], float]:
    """Step 1 on one chunk: its rows whose key's hash falls below `rate`, and the task's peak RSS."""
    keys, vectors = [], []
    for shard in shards:
        k, x = read_embeddings(root, shard)
        pick = key_uniform(seed, k) < rate
        keys.append(k[pick])
        vectors.append(x[pick])
    return {"keys": np.concatenate(keys), "vectors": np.concatenate(vectors)}, _peak_rss_mb()


def _kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    import faiss

    k = max(1, min(k, len(x)))
    if k == 1:
        centroid = x.mean(axis=0, keepdims=True)
    else:
        kmeans = faiss.Kmeans(x.shape[1], k, niter=KMEANS_ITERATIONS, seed=seed, spherical=True, verbose=False,
                              min_points_per_centroid=1, max_points_per_centroid=1 << 20)
        kmeans.train(np.ascontiguousarray(x))
        centroid = kmeans.centroids
    centroid = np.asarray(centroid, np.float32)
    return centroid / np.maximum(np.linalg.norm(centroid, axis=1, keepdims=True), 1e-12)


def _nearest(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's nearest centroid (inner product of unit vectors) and its cosine with it."""
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    sims, ids = index.search(np.ascontiguousarray(x), 1)
    return ids[:, 0].astype(np.int32), sims[:, 0].astype(np.float32)


def train_centroids(k: int, seed: int, total: int, *samples: dict[str, Any]) -> dict[str, Any]:
    """Step 2: k-means on the sample, big clusters split, clusters packed into partitions."""
    _threads()
    keys = np.concatenate([s["keys"] for s in samples])
    x = np.concatenate([s["vectors"] for s in samples])
    x = x[np.argsort(keys, kind="stable")]  # the same input, so the same centroids, whatever the arrangement
    del keys
    centroids = _kmeans(x, k, seed)
    cluster, _ = _nearest(x, centroids)
    scale = total / max(len(x), 1)
    parts = [centroids]
    for c in np.flatnonzero(np.bincount(cluster, minlength=len(centroids)) * scale > MAX_CLUSTER):
        members = x[cluster == c]
        pieces = math.ceil(len(members) * scale / MAX_CLUSTER)
        if min(pieces, len(members)) > 1:
            parts.append(_kmeans(members, pieces, seed + 1 + int(c)))
            parts[0][c] = np.nan  # replaced by its pieces
    centroids = np.concatenate(parts)
    centroids = centroids[~np.isnan(centroids).any(axis=1)]
    cluster, _ = _nearest(x, centroids)
    expected = np.bincount(cluster, minlength=len(centroids)) * scale
    partitions = max(1, math.ceil(total / PARTITION_ROWS))
    load, partition = np.zeros(partitions), np.zeros(len(centroids), np.int32)
    for c in np.argsort(-expected, kind="stable"):  # largest first, each into the least loaded partition
        p = int(np.argmin(load))
        partition[c], load[p] = p, load[p] + expected[c]
    return {"centroids": centroids, "partition": partition, "partitions": partitions, "rss": _peak_rss_mb()}


def assign_chunk(root: Location, shards: list[int], model: dict[str, Any]) -> list[dict[str, Any]]:
    """Step 3 on one chunk: each row's cluster and cosine with its centroid, its rows split by partition (sorted by
    cluster within each); the last element is the task's peak RSS."""
    _threads()
    keys, vectors, shard_of = [], [], []
    for shard in shards:
        k, x = read_embeddings(root, shard)
        keys.append(k)
        vectors.append(x)
        shard_of.append(np.full(len(k), shard, np.int32))
    key, x, shard_ids = np.concatenate(keys), np.concatenate(vectors), np.concatenate(shard_of)
    cluster, sim = _nearest(x, model["centroids"])
    partition = model["partition"][cluster]
    out = []
    for p in range(model["partitions"]):
        rows = np.flatnonzero(partition == p)
        rows = rows[np.argsort(cluster[rows], kind="stable")]
        out.append({"key": key[rows], "shard": shard_ids[rows], "cluster": cluster[rows], "sim": sim[rows],
                    "vectors": x[rows]})
    return [*out, {"rss": _peak_rss_mb()}]


def greedy_duplicates(x: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `x` (unit vectors, in keeping order) taken in turn: a row whose cosine with a row kept before it is at
    least `threshold` gets the most similar such row as its match, else it is kept (match −1).
    Returns (match, score)."""
    n = len(x)
    match, score = np.full(n, -1, np.int64), np.zeros(n, np.float32)
    kept = np.empty(0, np.int64)
    for start in range(0, n, BLOCK):
        block = x[start : start + BLOCK]
        best, arg = np.full(len(block), -np.inf, np.float32), np.full(len(block), -1, np.int64)
        for k0 in range(0, len(kept), KEPT_BLOCK):
            ids = kept[k0 : k0 + KEPT_BLOCK]
            sims = block @ x[ids].T
            top = sims.argmax(axis=1)
            value = sims[np.arange(len(block)), top]
            better = value > best
            best[better], arg[better] = value[better], ids[top[better]]
        inner = block @ block.T
        # the rows that an earlier row of the block is near to
        earlier = np.asarray(np.triu(inner >= threshold, 1).any(axis=0))
        kept_here: list[int] = []
        for j in range(len(block)):
            if earlier[j] and kept_here:
                sims = inner[j, kept_here]
                top = int(sims.argmax())
                if sims[top] > best[j]:
                    best[j], arg[j] = sims[top], start + kept_here[top]
            if best[j] >= threshold:
                match[start + j], score[start + j] = arg[j], best[j]
            else:
                kept_here.append(j)
        kept = np.concatenate([kept, start + np.asarray(kept_here, np.int64)])
    return match, score


def dedup_partition(threshold: float, *pieces: dict[str, Any]) -> dict[str, Any]:
    """Step 4 on one partition: its clusters one at a time; returns the marks (key, shard, match, score)."""
    pieces = tuple(p for p in pieces if len(p["key"]))
    clusters = np.unique(np.concatenate([p["cluster"] for p in pieces])) if pieces else np.empty(0, np.int32)
    out: dict[str, list[np.ndarray]] = {"key": [], "shard": [], "match": [], "score": []}
    largest = 0
    for c in clusters:
        spans = [(p, np.searchsorted(p["cluster"], c, "left"), np.searchsorted(p["cluster"], c, "right"))
                 for p in pieces]
        key = np.concatenate([p["key"][a:b] for p, a, b in spans])
        sim = np.concatenate([p["sim"][a:b] for p, a, b in spans])
        order = np.lexsort((key, sim))  # least similar to the centroid first, ties by key (SemDeDup keeps those)
        x = np.concatenate([p["vectors"][a:b] for p, a, b in spans])[order]
        largest = max(largest, len(x))
        match, score = greedy_duplicates(x, threshold)
        marked = np.flatnonzero(match >= 0)
        if len(marked):
            key, shard = key[order], np.concatenate([p["shard"][a:b] for p, a, b in spans])[order]
            out["key"].append(key[marked])
            out["shard"].append(shard[marked])
            out["match"].append(key[match[marked]])
            out["score"].append(score[marked])
        del x
    result: dict[str, Any] = {name: np.concatenate(parts) if parts else np.empty(0)
                              for name, parts in out.items()}
    return result | {"rss": _peak_rss_mb(), "largest": largest}


def plan(root: Location, threshold: float, clusters: int | None) -> tuple[list[int], list[int]]:
    """The complete shards and their accepted rows; a dataset or option it cannot run on is a UserError."""
    if not 0 < threshold <= 1:
        raise UserError(f"--threshold {threshold}: the cosine threshold must be in (0, 1]")
    if clusters is not None and clusters < 1:
        raise UserError(f"--clusters {clusters}: must be ≥ 1")
    load_dataset_meta(root)
    shards = complete_shards(root)
    if not shards:
        raise UserError(f"dataset {root} has no complete shards (no shards/NNNNN_stats.json); build it first")
    rows = [int(read_json(shard_paths(root, s)["stats"]).get("accepted", 0)) for s in shards]
    if not sum(rows):
        raise UserError(f"dataset {root} has no accepted samples in its {len(shards)} complete shards")
    return shards, rows


def chunks(shards: list[int], rows: list[int], size: int = CHUNK_ROWS) -> list[list[int]]:
    """Consecutive shards in chunks of at most `size` rows (a bigger shard alone)."""
    out, current, count = [], [], 0
    for shard, n in zip(shards, rows):
        if current and count + n > size:
            out.append(current)
            current, count = [], 0
        current.append(shard)
        count += n
    return [*out, current] if current else out


def semantic_dedup(root: Location, threshold: float = DEFAULT_THRESHOLD, clusters: int | None = None, seed: int = 0,
                   log: Callable[[str], None] = print, write: bool = True) -> DedupResult:
    """Mark the semantic duplicates of the dataset at `root` (on the Ray session the caller holds) and, with
    `write`, replace its `semantic_duplicates` mark set."""
    import ray

    shards, rows = plan(root, threshold, clusters)
    total = sum(rows)
    k = min(clusters or default_clusters(total), total)
    parts = chunks(shards, rows)
    result = DedupResult(total, 0, k, threshold, seed)
    log(f"{total} samples in {len(shards)} shards, {len(parts)} chunks; {k} clusters, threshold {threshold}")

    clock = time.monotonic()
    sample_size = min(total, MAX_SAMPLE, max(SAMPLE_PER_CLUSTER * k, 1000))
    sample = ray.remote(num_cpus=1, num_returns=2)(sample_chunk)
    drawn = [cast(list, sample.remote(root, chunk, seed, sample_size / total)) for chunk in parts]
    samples = [refs[0] for refs in drawn]  # stay in the object store: only the training task reads them
    result.seconds["sample"] = time.monotonic() - clock
    result.peak_rss_mb["sample"] = max(ray.get([refs[1] for refs in drawn]))
    log(f"sampled ~{sample_size} embeddings for k-means in {result.seconds['sample']:.1f} s")

    clock = time.monotonic()
    model = ray.remote(num_cpus=1)(train_centroids).remote(k, seed, total, *samples)
    trained = ray.get(model)
    del samples, drawn
    result.clusters, partitions = len(trained["centroids"]), trained["partitions"]
    result.seconds["kmeans"], result.peak_rss_mb["kmeans"] = time.monotonic() - clock, trained["rss"]
    log(f"k-means: {result.clusters} clusters in {partitions} partitions in {result.seconds['kmeans']:.1f} s")

    clock = time.monotonic()
    assign = ray.remote(num_cpus=1, num_returns=partitions + 1)(assign_chunk)
    pieces = [cast(list, assign.remote(root, chunk, model)) for chunk in parts]
    dedup = ray.remote(num_cpus=1)(dedup_partition)
    pending = [dedup.remote(threshold, *[refs[p] for refs in pieces]) for p in range(partitions)]
    result.peak_rss_mb["assign"] = max(r["rss"] for r in ray.get([refs[-1] for refs in pieces]))
    result.seconds["assign"] = time.monotonic() - clock
    log(f"assigned {total} embeddings to clusters in {result.seconds['assign']:.1f} s")
    del pieces, model
    clock = time.monotonic()  # (the partitions' tasks started as their pieces came)

    marks: dict[int, list[dict]] = {}
    rss, largest, done = [], 0, 0
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        part = ray.get(ready[0])
        rss.append(part["rss"])
        largest = max(largest, part["largest"])
        for key, shard, match, score in zip(part["key"].tolist(), part["shard"].tolist(), part["match"].tolist(),
                                            part["score"].tolist()):
            marks.setdefault(int(shard), []).append(
                {"key": key, "kind": "duplicate", "match": match, "score": float(score), "detail": "photo"})
        done += 1
        if done == partitions or done % max(1, partitions // 10) == 0:
            log(f"deduplicated {done}/{partitions} partitions, {sum(map(len, marks.values()))} duplicates so far")
    result.seconds["dedup"], result.peak_rss_mb["dedup"] = time.monotonic() - clock, max(rss)
    for rows_of in marks.values():
        rows_of.sort(key=lambda row: row["key"])
    result.marked, result.marks = sum(map(len, marks.values())), marks
    if write:
        clock = time.monotonic()
        summary = {"step": "lambda-eclipse dedup", "method": "SemDeDup (arXiv 2303.09540), faiss spherical k-means",
                   "embedding": "target_embedding", "threshold": threshold, "clusters": result.clusters,
                   "clusters_asked": k, "seed": seed, "samples": total, "largest_cluster": largest}
        write_marks(root, DUPLICATES, marks, summary)
        result.seconds["write"] = time.monotonic() - clock
    return result
