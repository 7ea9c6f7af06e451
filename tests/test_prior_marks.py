"""The prior's loader skips the samples marked beside the shards (storage/marks.py): split counts, epochs and the
sharding across ranks count only what is read, and what it yields is exactly what a dataset built without the marked
samples yields."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from lambda_eclipse.errors import UserError
from prior import data as data_module
from prior.config import DataSection, load_train_config
from prior.data import PriorBatches, open_dataset
from storage import shard_writer
from storage.layout import shard_paths, write_json_atomic
from storage.marks import DUPLICATES, LEAKS, write_marks
from storage.schema import feature_schema
from storage.synthetic_features import featured_sample, keys_for

D = 16
SHARDS = [(9, 3), (6, 4), (11, 2), (5, 3)]


def shard_keys(shard: int, n_train: int, n_val: int) -> list[str]:
    return keys_for("train", n_train, f"m{shard}") + keys_for("val", n_val, f"m{shard}")


def write(root: Path, leave_out: set[str] | frozenset[str] = frozenset()) -> Path:
    """SHARDS's samples in row groups of 4, less `leave_out` (a shard left empty is still written)."""
    root.mkdir(parents=True)
    zero = np.linspace(-1, 1, D).round(3).tolist()
    write_json_atomic(root / "dataset.json", {"embed_dim": D, "text_width": D, "zero_image_embedding": zero})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shard_writer, "ROW_GROUP", 4)
        for shard, (n_train, n_val) in enumerate(SHARDS):
            writer = shard_writer.ShardWriter(root, shard, feature_schema(D, D), 0.8, ["decode"])
            for key in shard_keys(shard, n_train, n_val):
                if key not in leave_out:
                    writer.add(featured_sample(key, D, D))
            writer.close({"description": "marks"})
    return root


def mark(root: Path, name: str, keys: set[str]) -> None:
    by_shard: dict[int, list[dict]] = {}
    for shard, (n_train, n_val) in enumerate(SHARDS):
        rows = [{"key": k, "kind": "duplicate" if name == DUPLICATES else "leak", "match": "x", "score": 0.99,
                 "detail": "photo"} for k in shard_keys(shard, n_train, n_val) if k in keys]
        if rows:
            by_shard[shard] = rows
    write_marks(root, name, by_shard, {"threshold": 0.95})


# shard 0: 2 train + 1 val marked as duplicates, one of them also a leak; shard 2: 2 train leaks; shard 3: every
# train row a duplicate (the shard leaves the train split); shard 1: no marks
DUPS = {*keys_for("train", 2, "m0"), keys_for("val", 1, "m0")[0], *keys_for("train", 5, "m3")}
LEAKED = {keys_for("train", 1, "m0")[0], *keys_for("train", 11, "m2")[4:6]}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    base = tmp_path_factory.mktemp("prior-marks")
    marked = write(base / "marked")
    mark(marked, DUPLICATES, DUPS)
    mark(marked, LEAKS, LEAKED)
    return {
        "marked": marked,
        "without": write(base / "without", DUPS | LEAKED),
        "without_dups": write(base / "without_dups", DUPS),
        "plain": write(base / "plain"),
    }


def test_counts_account_for_marked_rows(datasets):
    data = open_dataset(datasets["marked"])
    assert data.skipped == {DUPLICATES: 8, LEAKS: 3}  # the key in both sets counts in each
    assert data.splits["train"].shards == (0, 1, 2) and data.splits["train"].rows == (7, 6, 9)
    assert data.splits["val"].shards == (0, 1, 2, 3) and data.splits["val"].rows == (2, 4, 2, 3)
    assert sorted(data.marks) == sorted([DUPLICATES, LEAKS]) and data.marks[LEAKS]["shards"] == {0, 2}
    without = open_dataset(datasets["without"])
    assert (without.splits, without.skipped, without.marks) == (data.splits, {}, {})


def test_skipping_can_be_turned_off(datasets):
    plain = open_dataset(datasets["plain"])
    off = open_dataset(datasets["marked"], skip_duplicates=False, skip_leaks=False)
    assert (off.splits, off.skipped, off.marks) == (plain.splits, {}, {})
    only_dups = open_dataset(datasets["marked"], skip_leaks=False)
    assert only_dups.skipped == {DUPLICATES: 8}
    assert only_dups.splits == open_dataset(datasets["without_dups"]).splits
    assert DataSection().skip_duplicates and DataSection().skip_leaks
    cfg = load_train_config(None, ["data.skip_duplicates=false", "data.skip_leaks=false"])
    assert not cfg.data.skip_duplicates and not cfg.data.skip_leaks


def batches(root: Path, split: str, size: int, count: int, **kwargs) -> list[dict[str, torch.Tensor]]:
    return list(islice(PriorBatches(open_dataset(root, **kwargs.pop("open", {})), split, size, **kwargs), count))


def assert_equal(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> None:
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b):
        assert sorted(x) == sorted(y)
        for name in x:
            assert torch.equal(x[name], y[name]), name


@pytest.mark.parametrize("kwargs", [
    {"buffer": 5},
    {"buffer": 1000, "start": 3},
    {"buffer": 7, "rank": 1, "world": 2, "lanes": 1, "start": 2},
    {"buffer": 4, "rank": 0, "world": 2, "lanes": 1},
])
def test_training_batches_are_those_of_the_dataset_without_the_marked_samples(datasets, kwargs):
    # 6 batches of 5 from 22 rows (one rank: 4 epochs and more): shuffles, epochs and resumes all agree
    assert_equal(batches(datasets["marked"], "train", 5, 6, **kwargs),
                 batches(datasets["without"], "train", 5, 6, **kwargs))
    only_dups = batches(datasets["marked"], "train", 5, 6, open={"skip_leaks": False}, **kwargs)
    assert_equal(only_dups, batches(datasets["without_dups"], "train", 5, 6, **kwargs))


def targets(root: Path, keys: set[str] | None = None) -> dict[bytes, str]:
    """target embedding bytes → key, of every row of the dataset (or of `keys`)."""
    out = {}
    for shard in range(len(SHARDS)):
        table = pq.read_table(shard_paths(root, shard)["parquet"], columns=["key", "target_embedding"])
        for key, target in zip(table["key"].to_pylist(), table["target_embedding"].to_pylist()):
            if keys is None or key in keys:
                out[np.asarray(target, np.float32).tobytes()] = key
    return out


def test_marked_samples_are_never_yielded_and_every_other_is_once_per_epoch(datasets):
    key_of = targets(datasets["marked"])
    data = open_dataset(datasets["marked"])
    for split, per_epoch in (("train", 22), ("val", 11)):
        assert sum(data.splits[split].rows) == per_epoch
        seen = []
        for rank in range(2):  # two ranks share the shards: together they read each kept row once an epoch
            stream = PriorBatches(data, split, 1, rank=rank, world=2, buffer=3)
            rows = sum(data.splits[split].rows[rank::2])
            seen += [key_of[b["target"][0].numpy().tobytes()] for b in islice(stream, rows)]
        expected = {k for s, counts in enumerate(SHARDS) for k in keys_for(split, counts[split == "val"], f"m{s}")}
        expected -= DUPS | LEAKED
        assert sorted(seen) == sorted(expected) and len(seen) == per_epoch
        assert not set(seen) & (DUPS | LEAKED)
    val = list(PriorBatches(data, "val", 4, buffer=3))  # a validation stream reads one epoch: 11 rows
    assert [len(b["target"]) for b in val] == [4, 4, 3]


def test_without_marks_nothing_more_is_read(datasets, monkeypatch):
    reads = []
    original = data_module._read_row_group

    def spy(*args, **kwargs):
        group = original(*args, **kwargs)
        reads.append(args[-1] if len(args) > 6 else kwargs.get("skip"))
        return group

    monkeypatch.setattr(data_module, "_read_row_group", spy)
    plain = open_dataset(datasets["plain"])
    assert (plain.marks, plain.skipped) == ({}, {})
    list(islice(PriorBatches(plain, "train", 5, buffer=5), 8))
    assert reads and all(skip is None for skip in reads)
    reads.clear()
    list(islice(PriorBatches(open_dataset(datasets["marked"]), "train", 5, buffer=5), 8))
    # only the shards with marks read their keys: shard 1 has none
    assert any(skip is None for skip in reads) and any(skip is not None for skip in reads)


def test_a_split_left_empty_by_marks_is_refused(tmp_path):
    root = write(tmp_path / "data")
    mark(root, DUPLICATES, {k for s, (t, v) in enumerate(SHARDS) for k in keys_for("val", v, f"m{s}")})
    with pytest.raises(UserError, match="no 'val' samples in its 4 complete shards once the 12 marked samples"):
        open_dataset(root)
    assert open_dataset(root, skip_duplicates=False).skipped == {}
