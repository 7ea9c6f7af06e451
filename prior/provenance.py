"""What a prior is trained on: the record that summary.json and the prior registry keep of a run's data
(prior/registry.py's `leak_flag` judges it)."""

from __future__ import annotations

from prior.config import TrainConfig
from prior.data import Dataset
from prior.registry import shard_digests
from storage.marks import LEAKS, mark_sets
from storage.reader import load_dataset_meta


def provenance(dataset: Dataset, cfg: TrainConfig) -> dict:
    """What a prior is trained on, for summary.json and the prior registry (prior/registry.py's `leak_flag` judges
    it): the dataset's config hash; the shards the loader reads, each with its Parquet's sha256 (`_stats.json`'s); the
    rows each skipped mark set took out (`skipped`; data.skip_duplicates, data.skip_leaks) and every complete mark
    set's size (`marks`); and the dataset's leak check, the `leaks` set's benchmark, time and marks, with the shards
    read that it did not check as they are now (null: never checked)."""
    root = dataset.root
    shards = sorted(set(dataset.splits["train"].shards) | set(dataset.splits["val"].shards))
    digests = shard_digests(root, shards)
    sets = mark_sets(root)
    leaks = sets.get(LEAKS)
    check = None
    if leaks is not None:
        seen = leaks.get("checked_shards") or {}
        check = {"benchmark": leaks.get("benchmark"), "checked_at": leaks.get("checked_at"),
                 "marked": int(leaks.get("marked", 0)),
                 "unchecked_shards": sorted(s for s, digest in digests.items() if seen.get(s) != digest)}
    return {
        "dataset_hash": load_dataset_meta(root).get("config_hash"),
        "shards": digests,
        "skipped": {name: int(n) for name, n in dataset.skipped.items()},
        "marks": {name: int(summary.get("marked", 0)) for name, summary in sets.items()},
        "skip_duplicates": cfg.data.skip_duplicates,
        "skip_leaks": cfg.data.skip_leaks,
        "leak_check": check,
    }
