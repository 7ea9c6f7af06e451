"""Reading shards for the prior: interleaving, model inputs, shuffling, resumable positions, dataset errors."""

from itertools import islice
from typing import Any

import numpy as np
import pytest
import torch

from lambda_eclipse.errors import UserError
from lambda_eclipse.synthetic_features import write_feature_dataset as write_dataset
from prior.data import PriorBatches, buffer_order, interleave, loader, open_dataset
from storage.layout import write_json_atomic
from storage.reader import iter_samples

D = 32


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("prior-data"), [(7, 3), (5, 2), (6, 3)])


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
    (batch,) = PriorBatches(data, "val", batch_size=len(rows))  # validation reads in shard order
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
    from prior import data as data_module

    read = []

    def counting(*args, **kwargs):
        for row in iter_samples(*args, **kwargs):
            read.append(1)
            yield row

    monkeypatch.setattr(data_module, "iter_samples", counting)
    split = open_dataset(dataset).splits["train"]
    stream = data_module.Stream(str(dataset), "train", list(split.shards), list(split.rows), [0], True, buffer=2)
    assert len(list(islice(stream.read(18 + 15), 3))) == 3  # the last 3 rows of epoch 1 (18 rows an epoch)
    assert len(read) < 18  # rows of shards that the buffer had emitted in full were never read


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
