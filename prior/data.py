"""Training and validation batches for the prior, streamed from a built dataset's shards.

Each sample is interleaved when read (shared/DESIGN.md): the text hidden states at each subject's token positions
are replaced by that subject's CLIP image embedding. The input token is Gaussian noise ε (Eq. 1), and for a fraction
of training samples the edge (control) embedding is replaced by the zero-image embedding (the paper drops z_c for
1 %).

What a trainer sees is a pure function of (seed, batch index), so resuming needs only the number of batches already
consumed. A split's shards are dealt to logical streams, one per (data-parallel rank, loader lane); a training stream
cycles through its shards epoch after epoch, shuffled by a shard permutation and a shuffle buffer. The buffer's
output order is computed on row positions alone, so a resumed stream reads only the rows still to come, and memory
stays bounded by the buffer whatever the dataset's size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count, islice

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lambda_eclipse.errors import UserError
from storage.fs import Location
from storage.layout import complete_shards, read_json, shard_paths
from storage.reader import iter_samples, load_dataset_meta, parquet_file

COLUMNS = (
    "subjects", "attention_mask", "text_hidden_states", "text_embedding", "target_embedding",
    "subject_embeddings", "edge_embedding",
)
SPLITS = ("train", "val")


@dataclass(frozen=True)
class Split:
    """The complete shards holding rows of one split, and how many rows each holds (from its `_stats.json`)."""

    name: str
    shards: tuple[int, ...]
    rows: tuple[int, ...]


@dataclass(frozen=True)
class Dataset:
    root: str  # a local path or an fsspec URL: every loader worker and Ray Train worker opens it itself
    embed_dim: int
    zero_image: tuple[float, ...]
    splits: dict[str, Split]


def open_dataset(root: Location) -> Dataset:
    """Read dataset.json and the shards' stats and schemas; a dataset the prior cannot train on is a UserError."""
    meta = load_dataset_meta(root)
    d, w = int(meta["embed_dim"]), int(meta["text_width"])
    if w != d:
        raise UserError(
            f"dataset {root} has text width {w} but image embedding dim {d}; interleaving puts image embeddings into "
            "the text hidden states, so the two must be equal (a CLIP whose text and image towers share the width)"
        )
    zero = meta.get("zero_image_embedding")
    if zero is None or len(zero) != d:
        raise UserError(f"dataset {root}: dataset.json needs a zero_image_embedding of {d} values")
    shards = complete_shards(root)
    if not shards:
        raise UserError(f"dataset {root} has no complete shards (no shards/NNNNN_stats.json); build it first")
    counts = {name: [] for name in SPLITS}
    for shard in shards:
        paths = shard_paths(root, shard)
        with parquet_file(paths["parquet"]) as parquet:
            schema = parquet.schema_arrow.metadata
        dims = int(schema[b"embed_dim"]), int(schema[b"text_width"])
        if dims != (d, w):
            raise UserError(
                f"shard {paths['parquet']} has embedding dim {dims[0]} and text width {dims[1]}, but dataset.json "
                f"says {d} and {w}; it was built with another CLIP: rebuild it or remove it"
            )
        stats = read_json(paths["stats"])["splits"]
        for name in SPLITS:
            counts[name].append(stats.get(name, 0))
    splits = {}
    for name in SPLITS:
        kept = [(s, n) for s, n in zip(shards, counts[name]) if n > 0]
        if not kept:
            raise UserError(f"dataset {root} has no {name!r} samples in its {len(shards)} complete shards")
        splits[name] = Split(name, *map(tuple, zip(*kept)))
    return Dataset(str(root), d, tuple(float(x) for x in zero), splits)


def interleave(hidden_states: np.ndarray, subject_embeddings: np.ndarray, subjects: list[dict]) -> np.ndarray:
    """Set the (77, d) text hidden states at each subject's token positions to its image embedding, in place."""
    for embedding, subject in zip(subject_embeddings, subjects):
        hidden_states[subject["token_positions"]] = embedding
    return hidden_states


def buffer_order(n: int, buffer: int, rng: np.random.Generator) -> np.ndarray:
    """The order in which a shuffle buffer of `buffer` slots emits rows 0 … n−1 fed in sequence."""
    slots = rng.integers(0, buffer, n)  # drawn at once: one generator call instead of one per row
    held: list[int] = []
    out = np.empty(n, np.int64)
    emitted = 0
    for row in range(n):
        held.append(row)
        if len(held) == buffer:
            i = slots[row]
            held[i], held[-1] = held[-1], held[i]
            out[emitted] = held.pop()
            emitted += 1
    out[emitted:] = rng.permutation(held)
    return out


class Stream:
    """Rows of a fixed set of shards: training streams shuffle and cycle forever, validation streams read once."""

    def __init__(self, root: str, split: str, shards: list[int], rows: list[int], seed: list[int], shuffle: bool,
                 buffer: int):
        self.root, self.split, self.shards, self.rows = root, split, shards, rows
        self.seed, self.shuffle, self.buffer = seed, shuffle, buffer

    def read(self, start: int) -> Iterator[dict]:
        """Rows from position `start` of the stream (epochs concatenated)."""
        epoch, skip = divmod(start, sum(self.rows))
        while epoch == 0 or self.shuffle:
            yield from self._epoch(epoch, skip)
            epoch, skip = epoch + 1, 0

    def _epoch(self, epoch: int, skip: int) -> Iterator[dict]:
        rng = np.random.default_rng(self.seed + [epoch])
        shard_order = rng.permutation(len(self.shards)) if self.shuffle else np.arange(len(self.shards))
        sizes = np.array(self.rows)[shard_order]
        starts = np.concatenate([[0], np.cumsum(sizes)])
        order = buffer_order(int(starts[-1]), self.buffer, rng) if self.shuffle else np.arange(starts[-1])
        pending = order[skip:]
        needed = np.zeros(int(starts[-1]), bool)
        needed[pending] = True

        def rows_in_read_order() -> Iterator[tuple[int, dict]]:
            for k, i in enumerate(shard_order):
                if needed[starts[k] : starts[k + 1]].any():  # shards wholly consumed before `skip` are not read
                    samples = iter_samples(self.root, self.split, COLUMNS, [self.shards[i]])
                    for position, row in enumerate(samples, int(starts[k])):
                        if needed[position]:
                            yield position, row

        source = rows_in_read_order()
        loaded: dict[int, dict] = {}  # read but not yet emitted: at most the buffer's content
        for position in pending:
            while position not in loaded:
                p, row = next(source)
                loaded[p] = row
            yield loaded.pop(position)


class PriorBatches(IterableDataset):
    """The batches of one data-parallel rank, from its batch `start` on, as dicts of tensors.

    With k loader workers, rank batch b comes from lane b mod k (its (b div k)-th batch): the DataLoader takes
    batches from its workers in turn, so after a resume at batch s worker w serves lane (s + w) mod k.
    """

    def __init__(self, data: Dataset, split: str, batch_size: int, *, rank: int = 0, world: int = 1, lanes: int = 1,
                 start: int = 0, seed: int = 0, buffer: int = 1000, zero_control_prob: float = 0.0):
        self.data, self.split, self.batch_size = data, data.splits[split], batch_size
        self.rank, self.world, self.lanes, self.start = rank, world, lanes, start
        self.seed, self.buffer, self.zero_control_prob = seed, buffer, zero_control_prob
        self.shuffle = split == "train"
        self.zero_image = np.array(data.zero_image, np.float32)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        offset = self.start + (info.id if info else 0)
        lane = offset % self.lanes
        stream_id = self.rank * self.lanes + lane
        picked = slice(stream_id, None, self.world * self.lanes)
        shards, rows = list(self.split.shards[picked]), list(self.split.rows[picked])
        if not shards:  # more validation streams than shards: this one has nothing to read
            return
        seed = [self.seed, stream_id]
        stream = Stream(self.data.root, self.split.name, shards, rows, seed, self.shuffle, self.buffer)
        samples = stream.read(offset // self.lanes * self.batch_size)
        for lane_batch in count(offset // self.lanes):
            chunk = list(islice(samples, self.batch_size))
            if not chunk:
                return
            yield self.collate(chunk, lane_batch * self.lanes + lane)

    def collate(self, rows: list[dict], batch: int) -> dict[str, torch.Tensor]:
        """Stack rows into model inputs; ε and the control drop are drawn from a generator seeded by the batch."""
        rng = np.random.default_rng([self.seed, self.rank, batch, self.shuffle])
        control = np.stack([r["edge_embedding"] for r in rows])
        control[rng.random(len(rows)) < self.zero_control_prob] = self.zero_image
        # float32, so that the subject embeddings keep their precision; filled row by row: one copy of the largest part
        # (annotated: numpy's stubs type an array of shape (n, *shape) as 1-D)
        text: np.ndarray = np.empty((len(rows), *rows[0]["text_hidden_states"].shape), np.float32)
        for out, r in zip(text, rows):
            out[:] = r["text_hidden_states"]
            interleave(out, r["subject_embeddings"], r["subjects"])
        arrays = {
            "hidden_states": rng.standard_normal(control.shape, dtype=np.float32),
            "proj_embedding": np.stack([r["text_embedding"] for r in rows]),
            "encoder_hidden_states": text,
            "attention_mask": np.stack([r["attention_mask"] for r in rows]),
            "control_embedding": control,
            "target": np.stack([r["target_embedding"] for r in rows]),
        }
        return {name: torch.from_numpy(a) for name, a in arrays.items()}


def loader(data: Dataset, split: str, batch_size: int, workers: int, *, pin_memory: bool = False,
           **kwargs) -> DataLoader:
    """A DataLoader over `PriorBatches`; `workers` processes (0: in this process) each serve one lane."""
    dataset = PriorBatches(data, split, batch_size, lanes=max(workers, 1), **kwargs)
    return DataLoader(
        dataset, batch_size=None, num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0,
    )
