"""Training and validation batches for the prior, streamed from a built dataset's shards.

Each sample is interleaved when read (docs/shard-contract.md): the text hidden states at each subject's token positions
are replaced by that subject's CLIP image embedding. The input token is Gaussian noise ε (Eq. 1), and for a fraction
of training samples the edge (control) embedding is replaced by the zero-image embedding (the paper drops z_c for
1 %).

What a trainer sees is a pure function of (seed, batch index), so resuming needs only the number of batches already
consumed. A split's shards are dealt to logical streams, one per (data-parallel rank, loader lane); a training stream
cycles through its shards epoch after epoch, shuffled by a shard permutation and a shuffle buffer. The buffer's
output order is computed on row positions alone, so a resumed stream reads only the rows still to come, and memory
stays bounded by the buffer whatever the dataset's size.

The data path is columnar: threads read Parquet row groups ahead of their use (on object storage the next row
groups are in flight while the current batch is made) into contiguous arrays, zero-copy views of Arrow's buffers;
the rows a stream will still emit wait in the slots of a `_Pool` (the shuffle buffer, one array per column); a
batch is one gather of its rows' slots, one conversion of the text states to float32 and one scatter of the
subjects' embeddings into them.

Samples marked beside the shards (storage/marks.py: `semantic_duplicates` from `lambda-eclipse dedup`, `leaks` from
`lambda-eclipse decontaminate`) are skipped by default: `open_dataset` subtracts each shard's marked rows from its
split counts, so epochs and the sharding across ranks count only the rows read, and a stream reads a marked shard's
keys beside its rows and leaves the marked ones out. A shard without marks is read as before (no key column, no marks
file), and a dataset without marks costs one directory listing more.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from lambda_eclipse.errors import UserError
from storage.fs import Location, arrow
from storage.layout import complete_shards, read_json, shard_paths
from storage.marks import DUPLICATES, LEAKS, mark_sets, shard_marks
from storage.reader import load_dataset_meta, parquet_file
from storage.schema import CONTEXT_LENGTH, text_states

COLUMNS = (
    "split", "subjects", "attention_mask", "text_hidden_states", "text_embedding", "target_embedding",
    "subject_embeddings", "edge_embedding",
)
SPLITS = ("train", "val")
READ_AHEAD = 2  # row groups read ahead per stream, in as many threads (≈ 56 MB each at d = 1280)


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
    # the build's Canny settings (build config `edge`: thresholds and size), which generate --canny repeats, and its
    # subject crops (`subjects`: crop_size), which generate's subject crops repeat; None for a dataset written
    # without a build config
    edge: dict | None = None
    subjects: dict | None = None
    # the mark sets whose samples the loader skips (name → their _summary.json, "shards" as a frozenset), and how many
    # of the dataset's rows each one took out of the splits (a row in two sets counts in each); both empty when the
    # dataset has no marks or skipping is off
    marks: dict[str, dict] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)


def _marked(marks: dict[str, dict], shard: int) -> bool:
    return any(shard in summary["shards"] for summary in marks.values())


def _skipped_keys(root: Location, shard: int, marks: dict[str, dict]) -> frozenset[str] | None:
    """The keys of one shard marked in any of `marks`; None for a shard without marks (read as before)."""
    if not _marked(marks, shard):
        return None
    return frozenset(shard_marks(root, shard, marks)["key"].to_pylist())


def _isin(keys: pa.ChunkedArray, skip: frozenset[str] | set[str]) -> np.ndarray:
    return np.fromiter((key in skip for key in keys.to_pylist()), bool, len(keys))


def _marked_rows(root: Location, shard: int, marks: dict[str, dict]) -> tuple[dict[str, int], dict[str, int]]:
    """Of one shard with marks: the rows each set marks, and per split the rows any set marks."""
    filesystem, where = arrow(shard_paths(root, shard)["parquet"])
    table = pq.read_table(where, filesystem=filesystem, columns=["key", "split"])
    keys, split = table["key"], table["split"]
    per_set, union = {}, np.zeros(len(table), bool)
    for name in marks:
        hit = _isin(keys, set(shard_marks(root, shard, {name: marks[name]})["key"].to_pylist()))
        per_set[name] = int(hit.sum())
        union |= hit
    split = split.to_numpy(zero_copy_only=False)
    return per_set, {name: int((union & (split == name)).sum()) for name in SPLITS}


def open_dataset(root: Location, skip_duplicates: bool = True, skip_leaks: bool = True) -> Dataset:
    """Read dataset.json and the shards' stats and schemas; a dataset the prior cannot train on is a UserError.

    `skip_duplicates` / `skip_leaks` (train-prior's data.skip_duplicates, data.skip_leaks): leave out the samples the
    `semantic_duplicates` / `leaks` mark set holds (a set that is being written, without its summary, is not read)."""
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
    sets = mark_sets(root)
    wanted = [name for name, on in ((DUPLICATES, skip_duplicates), (LEAKS, skip_leaks)) if on and name in sets]
    marks = {name: sets[name] | {"shards": frozenset(sets[name].get("shards", []))} for name in wanted}
    skipped = dict.fromkeys(marks, 0)
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
        per_set, per_split = _marked_rows(root, shard, marks) if _marked(marks, shard) else ({}, {})
        for name, n in per_set.items():
            skipped[name] += n
        for name in SPLITS:
            counts[name].append(stats.get(name, 0) - per_split.get(name, 0))
    splits = {}
    for name in SPLITS:
        kept = [(s, n) for s, n in zip(shards, counts[name]) if n > 0]
        if not kept:
            marked = f" once the {sum(skipped.values())} marked samples are skipped" if any(skipped.values()) else ""
            raise UserError(f"dataset {root} has no {name!r} samples in its {len(shards)} complete shards{marked}")
        splits[name] = Split(name, *map(tuple, zip(*kept)))
    build = meta.get("config") or {}
    return Dataset(str(root), d, tuple(float(x) for x in zero), splits, build.get("edge"), build.get("subjects"),
                   marks, skipped)


def interleave(hidden_states: np.ndarray, subject_embeddings: np.ndarray, subjects: list[dict]) -> np.ndarray:
    """Set the (77, d) text hidden states at each subject's token positions to its image embedding, in place.

    The policy for one sample (generation uses it); the loader applies the same to whole batches (`_RowGroup`)."""
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


def _lengths(lists: pa.ListArray) -> np.ndarray:
    return np.diff(lists.offsets.to_numpy()).astype(np.int64)


def _array(column: pa.ChunkedArray) -> pa.Array:
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def _matrix(lists: pa.Array, *shape: int) -> np.ndarray:
    """A fixed_size_list array as an (n, *shape) array: a view of Arrow's buffer when it has no nulls."""
    return lists.flatten().to_numpy(zero_copy_only=False).reshape(len(lists), *shape)


class _RowGroup:
    """One Parquet row group as contiguous arrays, and the token positions its subjects take in the text states."""

    def __init__(self, table: pa.Table, split: str, dim: int, where: str, skip: frozenset[str] | None = None):
        column = {name: _array(table[name]) for name in COLUMNS}
        wanted = column["split"].to_numpy(zero_copy_only=False) == split
        if skip is not None:  # the split's rows less the marked ones
            wanted &= ~_isin(table["key"], skip)
        self.rows = np.flatnonzero(wanted)  # the split's rows
        self.text = text_states(column["text_hidden_states"], dim)  # float16, a view of Arrow's buffer
        self.text_embedding = _matrix(column["text_embedding"], dim)
        self.target = _matrix(column["target_embedding"], dim)
        self.edge = _matrix(column["edge_embedding"], dim)
        self.mask = _matrix(column["attention_mask"], CONTEXT_LENGTH)
        subjects, embeddings = column["subjects"], column["subject_embeddings"]
        per_row = _lengths(subjects)
        if not np.array_equal(per_row, _lengths(embeddings)):
            raise UserError(f"{where}: a row has a different number of subjects and subject embeddings; rebuild it")
        self.subject_embeddings = _matrix(embeddings.flatten(), dim)
        fields = subjects.flatten()
        positions = fields.flatten()[fields.type.get_field_index("token_positions")]
        # One entry per (subject, token position), in the order `interleave` writes them: where two subjects of a
        # row take the same position, the later one is what the sample holds, so only the last entry is kept.
        self.subject = np.repeat(np.arange(len(self.subject_embeddings)), _lengths(positions))
        self.row = np.repeat(np.arange(len(per_row)), per_row)[self.subject]
        self.position = positions.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
        if ((self.position < 0) | (self.position >= CONTEXT_LENGTH)).any():
            raise UserError(f"{where}: a subject's token position is outside the {CONTEXT_LENGTH} text tokens")
        reverse = (self.row * CONTEXT_LENGTH + self.position)[::-1]
        last = len(reverse) - 1 - np.unique(reverse, return_index=True)[1]
        self.subject, self.row, self.position = self.subject[last], self.row[last], self.position[last]


class _Slots:
    """A stack of free slot numbers, recently freed ones first; grows by calling `grow(new capacity)`."""

    def __init__(self, grow: Callable[[int], None]):
        self.grow, self.capacity = grow, 0
        self.free, self.count = np.empty(0, np.int64), 0

    def take(self, n: int) -> np.ndarray:
        if n > self.count:
            capacity = max(2 * self.capacity, self.capacity + n - self.count)
            self.grow(capacity)
            free = np.empty(capacity, np.int64)
            added = capacity - self.capacity
            free[:added] = np.arange(capacity - 1, self.capacity - 1, -1)  # below the recently freed ones
            free[added : added + self.count] = self.free[: self.count]
            self.free, self.capacity, self.count = free, capacity, self.count + added
        self.count -= n
        return self.free[self.count : self.count + n].copy()

    def give(self, slots: np.ndarray) -> None:
        self.free[self.count : self.count + len(slots)] = slots
        self.count += len(slots)


class _Pool:
    """The rows of a stream read but not yet emitted, one slot each, column by column: at most the shuffle buffer,
    a batch and a row group. The text states stay float16 here; which of their tokens a subject embedding replaces is
    kept per slot (`source`: the subject's slot in `embeddings`, −1 for none)."""

    def __init__(self, dim: int, pin: bool):
        self.dim, self.pin = dim, pin
        self.text = np.empty((0, CONTEXT_LENGTH, dim), np.float16)
        self.text_embedding, self.target, self.edge = (np.empty((0, dim), np.float32) for _ in range(3))
        self.mask = np.empty((0, CONTEXT_LENGTH), np.int8)
        self.source = np.empty((0, CONTEXT_LENGTH), np.int32)
        self.embeddings = np.empty((0, dim), np.float32)
        self.rows, self.subjects = _Slots(self._grow_rows), _Slots(self._grow_subjects)

    def _grow_rows(self, capacity: int) -> None:
        for name in ("text", "text_embedding", "target", "edge", "mask", "source"):
            old = getattr(self, name)
            new = np.empty((capacity, *old.shape[1:]), old.dtype)  # pages are touched only when a slot is used
            new[: len(old)] = old
            setattr(self, name, new)
        self.source[self.rows.capacity :] = -1  # the new slots (`rows.capacity` is still the old one)

    def _grow_subjects(self, capacity: int) -> None:
        new = np.empty((capacity, self.dim), np.float32)
        new[: len(self.embeddings)] = self.embeddings
        self.embeddings = new

    def put(self, group: _RowGroup, rows: np.ndarray) -> np.ndarray:
        """Copy rows of `group` into free slots; returns the slots."""
        slots = self.rows.take(len(rows))
        for dst, src in zip(slots, rows):  # one copy of each row's text states, no temporary
            self.text[dst] = group.text[src]
        for name in ("text_embedding", "target", "edge", "mask"):
            getattr(self, name)[slots] = getattr(group, name)[rows]
        slot_of_row = np.full(len(group.text), -1)
        slot_of_row[rows] = slots
        entry = slot_of_row[group.row] >= 0
        used, index = np.unique(group.subject[entry], return_inverse=True)
        places = self.subjects.take(len(used))
        self.embeddings[places] = group.subject_embeddings[used]
        self.source[slot_of_row[group.row[entry]], group.position[entry]] = places[index]
        return slots

    def take(self, slots: np.ndarray) -> dict[str, torch.Tensor]:
        """The rows in `slots` as tensors, the text states still float16 and the subjects' embeddings beside them
        (`to_device` interleaves them where the model runs); their slots become free."""
        n = len(slots)
        text = self._empty((n, CONTEXT_LENGTH, self.dim), torch.from_numpy(self.text[:0]).dtype)  # as stored
        np.take(self.text, slots, axis=0, out=text.numpy(), mode="clip")  # (the default mode buffers `out`)
        source = self.source[slots]
        row, position = np.nonzero(source >= 0)
        places = source[row, position]
        out = {
            "encoder_hidden_states": text,
            "subject_rows": torch.from_numpy(row), "subject_positions": torch.from_numpy(position),
            "subject_embeddings": self._gather(self.embeddings, places),
        }
        for key, name in (("proj_embedding", "text_embedding"), ("attention_mask", "mask"),
                          ("control_embedding", "edge"), ("target", "target")):
            out[key] = self._gather(getattr(self, name), slots)
        self.source[slots] = -1
        self.subjects.give(np.unique(places))
        self.rows.give(slots)
        return out

    def _gather(self, array: np.ndarray, index: np.ndarray) -> torch.Tensor:
        out = self._empty((len(index), *array.shape[1:]), torch.from_numpy(array[:0]).dtype)
        np.take(array, index, axis=0, out=out.numpy(), mode="clip")
        return out

    def _empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """Page-locked memory when asked (for copies to the GPU); in a DataLoader worker, shared memory, where the
        DataLoader would otherwise copy the batch to pass it on (as its own default_collate does)."""
        if self.pin or get_worker_info() is None:
            return torch.empty(shape, dtype=dtype, pin_memory=self.pin)
        storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)
        return torch.empty(0, dtype=dtype).set_(storage).view(shape)


def _footer(root: str, shard: int, marks: dict[str, dict]) -> tuple[pq.FileMetaData, frozenset[str] | None]:
    """A shard's Parquet footer, and its marked keys (None without marks)."""
    filesystem, where = arrow(shard_paths(root, shard)["parquet"])
    return pq.read_metadata(where, filesystem=filesystem), _skipped_keys(root, shard, marks)


def _read_row_group(root: str, shard: int, footer: pq.FileMetaData, group: int, split: str, dim: int,
                    skip: frozenset[str] | None = None) -> _RowGroup:
    location = shard_paths(root, shard)["parquet"]
    filesystem, where = arrow(location)
    columns = list(COLUMNS) if skip is None else [*COLUMNS, "key"]
    # pre_buffer: the group's column chunks are fetched in few, concurrent requests (what object stores need)
    with pq.ParquetFile(where, filesystem=filesystem, metadata=footer, pre_buffer=True) as parquet:
        table = parquet.read_row_group(group, columns=columns, use_threads=False)
    return _RowGroup(table, split, dim, f"{location} row group {group}", skip)


@dataclass(frozen=True)
class _Epoch:
    shard_order: np.ndarray  # positions in the stream's shard list, in reading order
    starts: np.ndarray  # the first row position of each shard in that order, and the epoch's size last
    order: np.ndarray  # the row positions in the order they are emitted


class Stream:
    """Rows of a fixed set of shards: training streams shuffle and cycle forever, validation streams read once."""

    def __init__(self, root: str, split: str, shards: list[int], rows: list[int], seed: list[int], shuffle: bool,
                 buffer: int, dim: int, pin: bool = False, marks: dict[str, dict] | None = None):
        self.root, self.split, self.shards, self.rows = root, split, shards, rows
        self.seed, self.shuffle, self.buffer, self.dim, self.pin = seed, shuffle, buffer, dim, pin
        self.marks = marks or {}  # the mark sets whose samples are left out (`rows` counts without them)

    def _shard_order(self, epoch: int) -> tuple[np.random.Generator, np.ndarray]:
        rng = np.random.default_rng(self.seed + [epoch])
        return rng, rng.permutation(len(self.shards)) if self.shuffle else np.arange(len(self.shards))

    def _epoch(self, epoch: int) -> _Epoch:
        rng, shard_order = self._shard_order(epoch)
        starts = np.concatenate([[0], np.cumsum(np.array(self.rows)[shard_order])])
        total = int(starts[-1])
        return _Epoch(shard_order, starts, buffer_order(total, self.buffer, rng) if self.shuffle else np.arange(total))

    def _row_groups(self, epoch: int, skipped: set[int], executor: ThreadPoolExecutor,
                    ) -> Iterator[tuple[int, int, Callable[[], _RowGroup]]]:
        """(epoch, shard's place in the epoch's order, a read of one of its row groups) in reading order; the first
        epoch leaves out the shards at the places in `skipped`. Each shard's footer is fetched (once) while the
        shard before it is read."""
        footers: dict[int, Future[tuple[pq.FileMetaData, frozenset[str] | None]]] = {}

        def footer(i: int) -> Future[tuple[pq.FileMetaData, frozenset[str] | None]]:
            if i not in footers:
                footers[i] = executor.submit(_footer, self.root, self.shards[i], self.marks)
            return footers[i]

        while True:
            places = [(k, int(i)) for k, i in enumerate(self._shard_order(epoch)[1]) if k not in skipped]
            for (k, i), after in zip(places, [*places[1:], None]):
                meta, skip = footer(i).result()
                if after is not None:
                    footer(after[1])
                for group in range(meta.num_row_groups):
                    yield epoch, k, partial(_read_row_group, self.root, self.shards[i], meta, group, self.split,
                                            self.dim, skip)
            if not self.shuffle:
                return
            epoch, skipped = epoch + 1, set()

    def batches(self, start: int, size: int) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of `size` rows from row position `start` of the stream (epochs concatenated); a validation
        stream's last batch may be smaller."""
        first, skip = divmod(start, sum(self.rows))
        if first and not self.shuffle:  # a validation stream has one epoch
            return
        epochs: dict[int, _Epoch] = {}
        slot_of: dict[int, np.ndarray] = {}  # per epoch: the slot holding each row position once read, else −1

        def epoch(e: int) -> _Epoch:
            if e not in epochs:
                epochs[e] = self._epoch(e)
                slot_of[e] = np.full(len(epochs[e].order), -1)
            return epochs[e]

        needed = np.zeros(len(epoch(first).order), bool)  # of the first epoch: the rows not emitted before `start`
        needed[epochs[first].order[skip:]] = True
        starts = epochs[first].starts
        skipped = {k for k in range(len(self.shards)) if not needed[starts[k] : starts[k + 1]].any()}
        executor = ThreadPoolExecutor(READ_AHEAD)
        reads = self._row_groups(first, skipped, executor)
        ahead: deque[tuple[int, int, Future[_RowGroup]]] = deque()
        pool = _Pool(self.dim, self.pin)
        reading, position = (first, -1), 0  # (epoch, shard's place) being read, and the next row position in it
        emitting, cursor = first, skip  # epoch being emitted, and how many of its rows were

        def shard_complete() -> None:
            e, k = reading
            if k >= 0 and position != epochs[e].starts[k + 1]:
                shard = self.shards[epochs[e].shard_order[k]]
                raise UserError(f"{self.root}: shard {shard} holds {position - epochs[e].starts[k]} {self.split!r} "
                                f"rows, but its _stats.json says {int(np.diff(epochs[e].starts)[k])}; rebuild it")

        def read_next() -> None:
            nonlocal reading, position
            while len(ahead) <= READ_AHEAD and (read := next(reads, None)) is not None:
                ahead.append((read[0], read[1], executor.submit(read[2])))
            if not ahead:
                shard_complete()
                raise UserError(f"{self.root}: the shards {self.shards} hold fewer {self.split!r} rows than their "
                                "_stats.json files say; rebuild them")
            e, k, future = ahead.popleft()
            group = future.result()
            if (e, k) != reading:
                shard_complete()
                reading, position = (e, k), int(epoch(e).starts[k])
                for old in [old for old in epochs if old < min(emitting, e)]:
                    del epochs[old], slot_of[old]
            positions = position + np.arange(len(group.rows))
            position += len(group.rows)
            if position > epochs[e].starts[k + 1]:
                shard_complete()
            keep = needed[positions] if e == first else slice(None)
            slot_of[e][positions[keep]] = pool.put(group, group.rows[keep])

        try:
            while True:
                parts, count = [], 0
                while count < size:
                    order = epoch(emitting).order
                    if cursor == len(order):
                        if not self.shuffle:
                            break
                        emitting, cursor = emitting + 1, 0
                        continue
                    positions = order[cursor : cursor + size - count]
                    while slot_of[emitting][positions.max()] < 0:
                        read_next()
                    parts.append(slot_of[emitting][positions])
                    cursor, count = cursor + len(positions), count + len(positions)
                if count:
                    yield pool.take(np.concatenate(parts))
                if count < size:
                    return
        finally:
            executor.shutdown(wait=False, cancel_futures=True)


class PriorBatches(IterableDataset):
    """The batches of one data-parallel rank, from its batch `start` on, as dicts of tensors.

    With k loader workers, rank batch b comes from lane b mod k (its (b div k)-th batch): the DataLoader takes
    batches from its workers in turn, so after a resume at batch s worker w serves lane (s + w) mod k.
    """

    def __init__(self, data: Dataset, split: str, batch_size: int, *, rank: int = 0, world: int = 1, lanes: int = 1,
                 start: int = 0, seed: int = 0, buffer: int = 1000, zero_control_prob: float = 0.0,
                 pin_memory: bool = False):
        self.data, self.split, self.batch_size = data, data.splits[split], batch_size
        self.rank, self.world, self.lanes, self.start = rank, world, lanes, start
        self.seed, self.buffer, self.zero_control_prob = seed, buffer, zero_control_prob
        self.shuffle = split == "train"
        self.pin_memory = pin_memory
        self.zero_image = torch.tensor(data.zero_image)  # cast to the control embeddings' dtype where it replaces one

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        offset = self.start + (info.id if info else 0)
        lane = offset % self.lanes
        stream_id = self.rank * self.lanes + lane
        picked = slice(stream_id, None, self.world * self.lanes)
        shards, rows = list(self.split.shards[picked]), list(self.split.rows[picked])
        if not shards:  # more validation streams than shards: this one has nothing to read
            return
        stream = Stream(self.data.root, self.split.name, shards, rows, [self.seed, stream_id], self.shuffle,
                        self.buffer, self.data.embed_dim, pin=self.pin_memory and info is None, marks=self.data.marks)
        for lane_batch, batch in enumerate(stream.batches(offset // self.lanes * self.batch_size, self.batch_size),
                                           offset // self.lanes):
            yield self.finish(batch, lane_batch * self.lanes + lane)

    def finish(self, rows: dict[str, torch.Tensor], batch: int) -> dict[str, torch.Tensor]:
        """A batch of rows with ε added and the control drop applied, both drawn from a generator seeded by the
        batch; `to_device` makes it the model's inputs."""
        rng = np.random.default_rng([self.seed, self.rank, batch, self.shuffle])
        control = rows["control_embedding"]
        control[torch.from_numpy(rng.random(len(control)) < self.zero_control_prob)] = self.zero_image
        return {"hidden_states": torch.from_numpy(rng.standard_normal(control.shape, dtype=np.float32)), **rows}


def to_device(batch: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    """The model's inputs from a loader batch, on `device`: the text states travel as float16 (half the bytes) and
    become float32 there, with each subject's image embedding written at its token positions (`interleave`)."""
    moved = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
    text = moved.pop("encoder_hidden_states").float()
    text[moved.pop("subject_rows"), moved.pop("subject_positions")] = moved.pop("subject_embeddings")
    return {"encoder_hidden_states": text, **moved}


def loader(data: Dataset, split: str, batch_size: int, workers: int, *, pin_memory: bool = False,
           **kwargs) -> DataLoader:
    """A DataLoader over `PriorBatches`; `workers` processes (0: in this process) each serve one lane. With
    `pin_memory` the batches come in page-locked memory, for asynchronous copies to the GPU: made there by this
    process's loader, copied there by the DataLoader from its workers' shared memory."""
    dataset = PriorBatches(data, split, batch_size, lanes=max(workers, 1), pin_memory=pin_memory, **kwargs)
    # forkserver: a forked copy of a Ray process (a Ray Train worker) inherits Ray's and gRPC's threads and exits with
    # status 1; the workers start from a clean process instead (an import of torch each, once a run: persistent).
    return DataLoader(
        dataset, batch_size=None, num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0,
        multiprocessing_context="forkserver" if workers > 0 else None,
    )
