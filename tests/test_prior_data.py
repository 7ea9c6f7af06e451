"""Reading shards for the prior: interleaving, model inputs, shuffling, resumable positions, dataset errors, and the
columnar loader's batches against the row-wise reference it replaced."""

import dataclasses
import shutil
import threading
import time
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import rewrite_text_states_as_legacy

from lambda_eclipse.errors import UserError
from prior import data as data_module
from prior.data import PriorBatches, buffer_order, interleave, loader, open_dataset, to_device
from storage import shard_writer
from storage.layout import read_json, shard_paths, write_json_atomic
from storage.reader import iter_samples
from storage.schema import feature_schema
from storage.synthetic_features import featured_sample, keys_for
from storage.synthetic_features import write_feature_dataset as write_dataset

D = 32


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("prior-data"), [(7, 3), (5, 2), (6, 3)])


def write_varied_dataset(root: Path, shards: list[tuple[int, int]], row_group: int = 4) -> Path:
    """Shards of several row groups whose samples have 1–4 subjects: multi-token words, and subjects that share a
    token position (the later one is what the sample holds)."""
    root.mkdir(parents=True, exist_ok=True)
    zero = np.linspace(-1, 1, D).round(3).tolist()
    write_json_atomic(root / "dataset.json", {"embed_dim": D, "text_width": D, "zero_image_embedding": zero})
    rng = np.random.default_rng(5)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shard_writer, "ROW_GROUP", row_group)
        for shard, (n_train, n_val) in enumerate(shards):
            writer = shard_writer.ShardWriter(root, shard, feature_schema(D, D), 0.8, ["decode"])
            for key in keys_for("train", n_train, f"v{shard}") + keys_for("val", n_val, f"v{shard}"):
                sample = featured_sample(key, D, D)
                base = sample.subjects[0]
                subjects = []
                for _ in range(rng.integers(1, 5)):
                    positions = sorted(rng.choice(np.arange(1, 12), rng.integers(1, 4), replace=False).tolist())
                    subjects.append(dataclasses.replace(base, token_positions=positions,
                                                        embedding=rng.normal(size=D).astype(np.float32)))
                sample.subjects = sample.detections = subjects
                writer.add(sample)
            writer.close({"description": "varied subjects"})
    return root


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    return write_varied_dataset(tmp_path_factory.mktemp("prior-varied"), [(9, 3), (6, 4), (11, 2), (5, 3)])


# --- the row-wise loader that the columnar one replaced: the specification of every batch ---------------------------


def reference_rows(root, split: str, shards: list[int], rows: list[int], seed: list[int], shuffle: bool,
                   buffer: int, start: int):
    """Rows (dicts, decoded one at a time) of a stream from position `start`, epochs concatenated."""
    epoch, skip = divmod(start, sum(rows))
    while epoch == 0 or shuffle:
        rng = np.random.default_rng(seed + [epoch])
        shard_order = rng.permutation(len(shards)) if shuffle else np.arange(len(shards))
        total = sum(rows)
        order = buffer_order(total, buffer, rng) if shuffle else np.arange(total)
        file_order = [row for i in shard_order for row in iter_samples(root, split, data_module.COLUMNS, [shards[i]])]
        for position in order[skip:]:
            yield file_order[position]
        epoch, skip = epoch + 1, 0


def reference_batch(data, split: str, batch_size: int, batch: int, *, rank=0, world=1, lanes=1, seed=0,
                    buffer=1000, zero_control_prob=0.0) -> dict[str, torch.Tensor] | None:
    """Rank batch `batch`: lane batch `batch` div lanes of stream (rank, batch mod lanes); None past the end."""
    lane, lane_batch = batch % lanes, batch // lanes
    stream = rank * lanes + lane
    picked = slice(stream, None, world * lanes)
    shards, rows = list(data.splits[split].shards[picked]), list(data.splits[split].rows[picked])
    if not shards:
        return None
    samples = reference_rows(data.root, split, shards, rows, [seed, stream], split == "train", buffer,
                             lane_batch * batch_size)
    chunk = list(islice(samples, batch_size))
    if not chunk:
        return None
    rng = np.random.default_rng([seed, rank, batch, split == "train"])
    control = np.stack([r["edge_embedding"] for r in chunk])
    control[rng.random(len(chunk)) < zero_control_prob] = np.array(data.zero_image, np.float32)
    # (annotated: numpy's stubs type an array of shape (n, *shape) as 1-D)
    text: np.ndarray = np.empty((len(chunk), *chunk[0]["text_hidden_states"].shape), np.float32)
    for out, r in zip(text, chunk):
        out[:] = r["text_hidden_states"]
        interleave(out, r["subject_embeddings"], r["subjects"])
    arrays = {
        "hidden_states": rng.standard_normal(control.shape, dtype=np.float32),
        "proj_embedding": np.stack([r["text_embedding"] for r in chunk]),
        "encoder_hidden_states": text,
        "attention_mask": np.stack([r["attention_mask"] for r in chunk]),
        "control_embedding": control,
        "target": np.stack([r["target_embedding"] for r in chunk]),
    }
    return {name: torch.from_numpy(a) for name, a in arrays.items()}


def assert_same_batches(got: list[dict[str, torch.Tensor]], expected: list[dict[str, torch.Tensor] | None]):
    present = [b for b in expected if b is not None]
    assert len(got) == len(present)
    for a, b in zip([to_device(g, "cpu") for g in got], present):
        assert sorted(a) == sorted(b)
        for name in a:
            assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
            assert torch.equal(a[name], b[name]), name  # bit for bit


def islice_batches(batches, n):
    return list(islice(batches, n))


def _targets(batch):
    return [tuple(row) for row in batch["target"].numpy()]


def test_interleave_replaces_the_subject_positions_and_nothing_else():
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(77, 8)).astype(np.float32)
    before = hidden.copy()
    embeddings = rng.normal(size=(2, 8)).astype(np.float32)
    out = interleave(hidden, embeddings, [{"token_positions": [2]}, {"token_positions": [5, 6]}])
    assert out is hidden
    np.testing.assert_array_equal(out[2], embeddings[0])
    np.testing.assert_array_equal(out[5], embeddings[1])
    np.testing.assert_array_equal(out[6], embeddings[1])
    untouched = [i for i in range(77) if i not in (2, 5, 6)]
    np.testing.assert_array_equal(out[untouched], before[untouched])


def test_batches_carry_the_interleaved_sample_and_the_eq1_inputs(dataset):
    data = open_dataset(dataset)
    rows = list(iter_samples(dataset, "val"))
    (raw,) = PriorBatches(data, "val", batch_size=len(rows))  # validation reads in shard order
    assert raw["encoder_hidden_states"].dtype == torch.float16  # half the bytes to the device
    assert raw["subject_rows"].tolist() == [i for i in range(len(rows)) for _ in (2, 5)]
    batch = to_device(raw, "cpu")
    assert batch["encoder_hidden_states"].shape == (len(rows), 77, D)
    assert batch["encoder_hidden_states"].dtype == torch.float32  # the subject embeddings keep their precision
    for i, row in enumerate(rows):
        positions = [p for s in row["subjects"] for p in s["token_positions"]]
        assert positions == [2, 5]
        expected = row["text_hidden_states"].astype(np.float32)
        expected[2], expected[5] = row["subject_embeddings"]
        np.testing.assert_array_equal(batch["encoder_hidden_states"][i].numpy(), expected)
        np.testing.assert_array_equal(batch["proj_embedding"][i].numpy(), row["text_embedding"])
        np.testing.assert_array_equal(batch["target"][i].numpy(), row["target_embedding"])
        np.testing.assert_array_equal(batch["control_embedding"][i].numpy(), row["edge_embedding"])
        np.testing.assert_array_equal(batch["attention_mask"][i].numpy(), row["attention_mask"])
    noise = batch["hidden_states"]
    assert noise.shape == (len(rows), D) and noise.dtype == torch.float32
    assert abs(noise.mean()) < 0.3 and 0.7 < noise.std() < 1.3  # ε ~ N(0, I)


@pytest.mark.parametrize("prob, zeroed", [(0.0, 0), (1.0, 18)])
def test_control_embedding_is_replaced_by_the_zero_image_embedding(dataset, prob, zeroed):
    data = open_dataset(dataset)
    (batch,) = islice_batches(PriorBatches(data, "train", batch_size=18, zero_control_prob=prob), 1)
    zero = torch.tensor(data.zero_image)
    assert sum(torch.equal(c, zero) for c in batch["control_embedding"]) == zeroed


def test_training_stream_shuffles_across_shards_every_epoch(dataset):
    data = open_dataset(dataset)
    file_order = [tuple(r["target_embedding"]) for r in iter_samples(dataset, "train")]
    epochs = [_targets(b) for b in islice_batches(PriorBatches(data, "train", batch_size=18, buffer=4), 3)]
    for epoch in epochs:
        assert sorted(epoch) == sorted(file_order)  # each sample exactly once per epoch
        assert epoch != file_order
    assert epochs[0] != epochs[1] != epochs[2]


def test_a_dataset_with_the_earlier_float16_list_text_states_gives_the_same_batches(varied, tmp_path):
    legacy = tmp_path / "legacy"
    shutil.copytree(varied, legacy)
    for shard in range(4):
        rewrite_text_states_as_legacy(legacy, shard)
    kwargs: dict[str, Any] = dict(seed=3, buffer=6, zero_control_prob=0.3)
    new = list(islice(PriorBatches(open_dataset(varied), "train", 7, **kwargs), 6))
    old = list(islice(PriorBatches(open_dataset(legacy), "train", 7, **kwargs), 6))
    assert_same_batches(old, [to_device(b, "cpu") for b in new])
    assert [r["key"] for r in iter_samples(legacy)] == [r["key"] for r in iter_samples(varied)]


def test_buffer_order_is_a_bounded_permutation():
    rng = np.random.default_rng(1)
    order = buffer_order(100, 8, rng)
    assert sorted(order) == list(range(100))
    assert all(row <= j + 7 for j, row in enumerate(order))  # nothing leaves before it was read
    np.testing.assert_array_equal(buffer_order(10, 1, rng), np.arange(10))


@pytest.mark.parametrize("start", [3, 4])
def test_a_resumed_loader_continues_exactly_where_it_stopped(dataset, start):
    """Two loader workers (lanes), across epoch boundaries: batches from `start` equal the uninterrupted ones."""
    data = open_dataset(dataset)
    kwargs: dict[str, Any] = dict(rank=0, world=1, seed=7, buffer=5, zero_control_prob=0.5)
    full = islice_batches(iter(loader(data, "train", 5, 2, **kwargs)), start + 4)
    resumed = islice_batches(iter(loader(data, "train", 5, 2, start=start, **kwargs)), 4)
    for a, b in zip(full[start:], resumed):
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


def test_a_resumed_stream_does_not_read_the_shards_already_consumed(dataset, monkeypatch):
    read = []

    def counting(*args, **kwargs):
        group = real(*args, **kwargs)
        read.append(len(group.rows))
        return group

    real = data_module._read_row_group
    monkeypatch.setattr(data_module, "_read_row_group", counting)
    split = open_dataset(dataset).splits["train"]
    stream = data_module.Stream(str(dataset), "train", list(split.shards), list(split.rows), [0], True, buffer=2,
                                dim=D)
    assert len(list(islice(stream.batches(18 + 15, 1), 3))) == 3  # the last 3 rows of epoch 1 (18 rows an epoch)
    assert sum(read) < 18  # rows of shards that the buffer had emitted in full were never read


CONFIGS = [  # (split, batch size, lanes, start, buffer, rank, world, zero-control probability)
    ("train", 5, 1, 0, 1000, 0, 1, 0.5),  # the buffer holds whole epochs
    ("train", 4, 1, 3, 3, 0, 1, 0.5),  # a small buffer, resumed mid-epoch
    ("train", 7, 2, 5, 6, 0, 1, 0.3),  # two lanes
    ("train", 3, 2, 0, 4, 1, 2, 1.0),  # rank 1 of 2, every control dropped
    ("train", 40, 1, 2, 10, 0, 1, 0.01),  # batches longer than an epoch of the stream
    ("train", 1, 1, 31, 1, 0, 1, 0.5),  # batch 1, buffer 1 (no shuffle within the epoch), resumed in epoch 1
    ("val", 4, 1, 0, 1000, 0, 1, 0.0),  # read once, in shard order, the last batch short
    ("val", 3, 2, 1, 1000, 0, 1, 0.0),
    ("val", 5, 1, 2, 1000, 1, 2, 0.0),
    ("val", 2, 1, 40, 1000, 0, 1, 0.0),  # resumed past the end: nothing
]


@pytest.mark.parametrize("split, batch_size, lanes, start, buffer, rank, world, prob", CONFIGS)
def test_the_columnar_loader_yields_exactly_the_row_wise_loaders_batches(varied, split, batch_size, lanes, start,
                                                                        buffer, rank, world, prob):
    """Same rows, same interleaving (multi-token subjects, shared token positions), same ε and control drops,
    across row groups, shards and epochs; from a resumed start too."""
    data = open_dataset(varied)
    kwargs: dict[str, Any] = dict(rank=rank, world=world, seed=11, buffer=buffer, zero_control_prob=prob)
    n = 12
    got = list(islice(PriorBatches(data, split, batch_size, lanes=lanes, start=start, **kwargs), n))
    # without loader workers, PriorBatches serves the lane of its start: every lanes-th batch of the rank
    expected = [reference_batch(data, split, batch_size, b, lanes=lanes, **kwargs)
                for b in range(start, start + n * lanes, lanes)]
    assert_same_batches(got, expected)


@pytest.mark.parametrize("workers", [0, 2])
def test_the_loader_with_workers_yields_the_reference_batches_and_resumes_exactly(varied, workers):
    data = open_dataset(varied)
    kwargs: dict[str, Any] = dict(rank=0, world=1, seed=3, buffer=5, zero_control_prob=0.5)
    for start in (0, 7):
        got = list(islice(iter(loader(data, "train", 6, workers, start=start, **kwargs)), 10))
        expected = [reference_batch(data, "train", 6, b, lanes=max(workers, 1), **kwargs)
                    for b in range(start, start + 10)]
        assert_same_batches(got, expected)


def test_memory_stays_bounded_by_the_buffer_a_batch_and_a_row_group(varied, monkeypatch):
    held, capacities = [], []

    class Recording(data_module._Pool):
        def take(self, slots):
            held.append(self.rows.capacity - self.rows.count)
            capacities.append(self.rows.capacity)
            return super().take(slots)

    monkeypatch.setattr(data_module, "_Pool", Recording)
    split = open_dataset(varied).splits["train"]
    stream = data_module.Stream(str(varied), "train", list(split.shards), list(split.rows), [0], True, buffer=8,
                                dim=D)
    assert len(list(islice(stream.batches(0, 3), 60))) == 60  # 180 rows: 5 epochs of 31
    assert max(held) <= 8 + 3 + 4  # rows read and not yet emitted
    assert max(capacities) <= 2 * max(held)  # slots grow by doubling


def test_row_groups_are_read_ahead_in_threads(varied, monkeypatch):
    """On object storage each read waits on round trips: the next row groups are in flight while a batch is made."""
    active, most = [0], [0]
    lock = threading.Lock()

    def slow(*args, **kwargs):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.05)
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    real = data_module._read_row_group
    monkeypatch.setattr(data_module, "_read_row_group", slow)
    data = open_dataset(varied)
    assert len(list(islice(PriorBatches(data, "train", 4, buffer=2), 8))) == 8
    assert most[0] == data_module.READ_AHEAD


def test_a_shard_with_fewer_rows_than_its_stats_say_is_an_error(tmp_path):
    root = write_dataset(tmp_path / "data", [(4, 1), (3, 1)])
    stats = read_json(shard_paths(root, 0)["stats"])
    stats["splits"]["train"] += 1
    write_json_atomic(shard_paths(root, 0)["stats"], stats)
    with pytest.raises(UserError, match="shard 0 holds 4 'train' rows, but its _stats.json says 5; rebuild it"):
        list(PriorBatches(open_dataset(root), "train", 2, buffer=1000))


def test_data_parallel_ranks_read_disjoint_shards(dataset):
    data = open_dataset(dataset)
    epoch = [set(_targets(next(iter(PriorBatches(data, "train", n, rank=r, world=2)))))
             for r, n in ((0, 13), (1, 5))]  # rank 0: shards 0 and 2 (7 + 6), rank 1: shard 1 (5)
    assert not epoch[0] & epoch[1]
    assert len(epoch[0] | epoch[1]) == 18


def test_dataset_errors_name_the_problem(tmp_path):
    with pytest.raises(UserError, match="is not a λ-ECLIPSE dataset"):
        open_dataset(tmp_path / "missing")
    with pytest.raises(UserError, match="no 'val' samples in its 1 complete shards"):
        open_dataset(write_dataset(tmp_path / "noval", [(4, 0)]))
    with pytest.raises(UserError, match="00001.parquet has embedding dim 16 and text width 16, but dataset.json says"):
        open_dataset(write_dataset(tmp_path / "dims", [(3, 1), (3, 1)], shard_dims={1: 16}))
    empty = tmp_path / "empty"
    empty.mkdir()
    write_json_atomic(empty / "dataset.json", {"embed_dim": D, "text_width": D, "zero_image_embedding": [0.0] * D})
    with pytest.raises(UserError, match="has no complete shards"):
        open_dataset(empty)
    write_json_atomic(empty / "dataset.json", {"embed_dim": D, "text_width": 16, "zero_image_embedding": [0.0] * D})
    with pytest.raises(UserError, match="text width 16 but image embedding dim 32"):
        open_dataset(empty)
