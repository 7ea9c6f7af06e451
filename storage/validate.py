"""`lambda-eclipse validate-dataset DIR`'s checker: read back every shard of a built dataset and check it against its
`_stats.json` and `dataset.json` (the shard contract, docs/shard-contract.md).

Checked, per complete shard: every file listed in `_stats.json` exists with its size and sha256; the features
Parquet has the contract's schema with the embedding dims of `dataset.json`, as many rows as `accepted`, the split
counts of `splits`, each row's split equal to its key's hash split, one subject embedding per subject, and no NaN
or infinite value in any float column; the rejects Parquet has `rejected` rows and the per-stage counts; the
WebDataset tar holds the same keys in the same order with their `.jpg`, `.json`, `.mask.png` and one
`.subj<i>.png` per subject. Across shards: every key (accepted or rejected) is unique, and the train fraction is
within a tolerance of the configured one. Shards without `_stats.json` are incomplete (readers skip them): a
warning, not a failure.

`DIR` is a local path or an fsspec URL (`s3://bucket/data`, `memory://data`). Memory stays bounded by one Parquet
batch whatever the dataset's size.
"""

from __future__ import annotations

import json
import math
import re
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from storage.fs import join, resolve
from storage.kept import KEPT
from storage.layout import DATASET_JSON, SHARDS, file_digest
from storage.schema import CONTEXT_LENGTH, LEGACY_REJECTS, REJECTS, feature_schema, legacy_text_states_type, text_states
from storage.shard_writer import split_of

FLOAT_COLUMNS = ("text_hidden_states", "text_embedding", "target_embedding", "edge_embedding", "subject_embeddings")
EMBEDDINGS = ("text_embedding", "target_embedding", "edge_embedding")
BATCH_ROWS = 256
SIGMAS = 4.0  # the split is a hash of the key, so its train count is binomial: flag beyond 4 standard deviations
STATS_NAME = re.compile(r"^(\d{5})_stats\.json$")
DATA_NAME = re.compile(r"^(\d{5})(?:\.parquet|\.tar|_rejects\.parquet|_kept\.parquet)$")


@dataclass
class Problem:
    shard: str | None  # "00003", or None for the dataset as a whole
    check: str  # sha256, size, missing, schema, dims, rows, splits, nan, keys, tar, rejects, kept, stats, meta, …
    message: str

    def __str__(self) -> str:
        return f"shard {self.shard}: {self.message}" if self.shard else self.message


@dataclass
class ShardResult:
    shard: str
    rows: int = 0
    train: int = 0
    val: int = 0
    rejected: int = 0
    problems: int = 0


@dataclass
class Report:
    root: str
    shards: list[ShardResult] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    train_fraction: float | None = None
    embed_dim: int | None = None
    text_width: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def totals(self) -> dict[str, int]:
        return {k: sum(getattr(s, k) for s in self.shards) for k in ("rows", "train", "val", "rejected")}

    def summary(self) -> str:
        t = self.totals
        share = f"{100 * t['train'] / t['rows']:.1f} % train" if t["rows"] else "no rows"
        expected = f", expected {100 * self.train_fraction:.0f} %" if self.train_fraction is not None else ""
        head = (f"{len(self.shards)} shards, {t['rows']} samples ({t['train']} train / {t['val']} val: {share}"
                f"{expected}), {t['rejected']} rejected inputs")
        if self.ok:
            return f"{self.root}: valid: {head}"
        return (f"{self.root}: INVALID, {len(self.problems)} problem(s): "
                + "; ".join(str(p) for p in self.problems[:5])
                + (f"; … {len(self.problems) - 5} more" if len(self.problems) > 5 else ""))

    def rows(self) -> list[dict[str, Any]]:
        """One row per shard, for a table artifact."""
        return [
            {"shard": s.shard, "samples": s.rows, "train": s.train, "val": s.val, "rejected": s.rejected,
             "status": "ok" if not s.problems else f"{s.problems} problem(s)"}
            for s in self.shards
        ]

    def text(self) -> str:
        lines = [f"validate-dataset {self.root}: {'OK' if self.ok else 'FAILED'}", self.summary(), ""]
        lines.append(f"{'shard':>6} {'samples':>8} {'train':>6} {'val':>5} {'rejected':>9}  status")
        for r in self.rows():
            lines.append(f"{r['shard']:>6} {r['samples']:>8} {r['train']:>6} {r['val']:>5} {r['rejected']:>9}  "
                         f"{r['status']}")
        for w in self.warnings:
            lines.append(f"warning: {w}")
        if self.problems:
            lines.append("")
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)

    def markdown(self) -> str:
        lines = [f"## validate-dataset: {'✅ valid' if self.ok else '❌ invalid'}", "", f"`{self.root}`", "",
                 self.summary().split(": ", 1)[-1] if self.ok else f"{len(self.problems)} problem(s)", ""]
        if self.problems:
            lines += ["| shard | check | problem |", "|---|---|---|"]
            lines += [f"| {p.shard or '—'} | {p.check} | {p.message.replace('|', '/')} |" for p in self.problems]
            lines.append("")
        lines += ["| shard | samples | train | val | rejected | status |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['shard']} | {r['samples']} | {r['train']} | {r['val']} | {r['rejected']} | {r['status']} |"
                  for r in self.rows()]
        for w in self.warnings:
            lines.append(f"\n⚠️ {w}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"root": self.root, "ok": self.ok, "summary": self.summary(), "totals": self.totals,
                "shards": self.rows(), "problems": [str(p) for p in self.problems], "warnings": self.warnings,
                "text": self.text()}


def _fs(root: str):
    fs, path = resolve(root)
    return fs, path.rstrip("/")


class _Checker:
    def __init__(self, root: str, split_tolerance: float | None):
        self.root = root
        self.fs, self.base = _fs(root)
        self.report = Report(str(root))
        self.split_tolerance = split_tolerance
        self.keys: dict[str, str] = {}  # key → the shard that holds it

    def problem(self, shard: str | None, check: str, message: str, result: ShardResult | None = None) -> None:
        self.report.problems.append(Problem(shard, check, message))
        if result is not None:
            result.problems += 1

    # -- dataset level -------------------------------------------------------------------------------------------

    def meta(self) -> dict | None:
        path = f"{self.base}/{DATASET_JSON}"
        if not self.fs.isfile(path):
            self.problem(None, "meta", f"no {DATASET_JSON} in {self.report.root}: not a λ-ECLIPSE dataset "
                                       "(build one with `lambda-eclipse build-dataset`)")
            return None
        try:
            with self.fs.open(path, "rb") as f:
                meta = json.load(f)
            d, w = int(meta["embed_dim"]), int(meta["text_width"])
        except (ValueError, KeyError, TypeError) as exc:
            self.problem(None, "meta", f"{DATASET_JSON} is unreadable or lacks embed_dim/text_width ({exc!r})")
            return None
        self.report.embed_dim, self.report.text_width = d, w
        zero = meta.get("zero_image_embedding")
        if zero is not None:
            if len(zero) != d:
                self.problem(None, "dims",
                             f"{DATASET_JSON}: zero_image_embedding has {len(zero)} values, embed_dim is {d}")
            elif not all(math.isfinite(x) for x in zero):
                self.problem(None, "nan", f"{DATASET_JSON}: zero_image_embedding has NaN or infinite values")
        fraction = ((meta.get("config") or {}).get("split") or {}).get("train_fraction")
        self.report.train_fraction = float(fraction) if fraction is not None else None
        return meta

    def shard_names(self) -> tuple[list[str], list[str]]:
        """(complete shards, shards with data files but no _stats.json)."""
        folder = f"{self.base}/{SHARDS}"
        if not self.fs.isdir(folder):
            return [], []
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(folder, detail=False)]
        complete = sorted({m.group(1) for n in names if (m := STATS_NAME.match(n))})
        started = {m.group(1) for n in names if (m := DATA_NAME.match(n))}
        temporary = [n for n in names if n.startswith(".") and n.endswith(".tmp")]
        if temporary:
            self.report.warnings.append(f"{len(temporary)} temporary file(s) of an interrupted run in {SHARDS}/ "
                                        f"(e.g. {temporary[0]}); a rerun of build-dataset replaces them")
        return complete, sorted(started - set(complete))

    # -- one shard -------------------------------------------------------------------------------------------------

    def shard(self, shard: str) -> None:
        result = ShardResult(shard)
        self.report.shards.append(result)
        folder = f"{self.base}/{SHARDS}"
        try:
            with self.fs.open(f"{folder}/{shard}_stats.json", "rb") as f:
                stats = json.load(f)
        except ValueError as exc:
            self.problem(shard, "stats", f"{shard}_stats.json is not valid JSON ({exc})", result)
            return
        files = stats.get("files") or {}
        expected_files = {f"{shard}.parquet", f"{shard}.tar", f"{shard}_rejects.parquet"}
        for name in sorted(expected_files - files.keys()):
            self.problem(shard, "stats", f"{shard}_stats.json lists no sha256 for {name}", result)
        present = set()
        for name, info in sorted(files.items()):
            path = f"{folder}/{name}"
            if not self.fs.isfile(path):
                self.problem(shard, "missing", f"file {name} is missing (listed in {shard}_stats.json)", result)
                continue
            held = file_digest(join(self.root, SHARDS, name))  # one read gives both
            digest, size = held["sha256"], held["bytes"]
            if info.get("bytes") is not None and size != info["bytes"]:
                self.problem(shard, "size", f"{name} has {size} bytes, {shard}_stats.json says {info['bytes']}", result)
            if digest != info.get("sha256"):
                self.problem(shard, "sha256", f"{name} sha256 mismatch: file {digest[:12]}…, "
                                              f"{shard}_stats.json {str(info.get('sha256'))[:12]}…", result)
            present.add(name)
        inputs, accepted, rejected = stats.get("inputs"), stats.get("accepted"), stats.get("rejected")
        if None not in (inputs, accepted, rejected) and inputs != accepted + rejected:
            self.problem(shard, "stats", f"_stats.json: inputs {inputs} ≠ accepted {accepted} + rejected {rejected}",
                         result)
        features = self.features(shard, stats, result) if f"{shard}.parquet" in present else None
        if f"{shard}_rejects.parquet" in present:
            self.rejects(shard, stats, result)
        if f"{shard}_kept.parquet" in present:  # datasets built before model outputs were kept have none
            self.kept(shard, stats, result)
        if f"{shard}.tar" in present and features is not None:  # the tar is compared with readable features
            self.tar(shard, *features, result)

    def features(self, shard: str, stats: dict, result: ShardResult) -> tuple[list[str], list[int]] | None:
        path = f"{self.base}/{SHARDS}/{shard}.parquet"
        d, w = self.report.embed_dim, self.report.text_width
        try:
            with self.fs.open(path, "rb") as f:
                parquet = pq.ParquetFile(f)
                schema = parquet.schema_arrow
                if d is not None and w is not None and not self.schema_ok(shard, schema, feature_schema(d, w), result):
                    if "key" in schema.names:  # keys are still counted and checked for uniqueness
                        keys = parquet.read(columns=["key"], use_threads=False).column("key").to_pylist()
                        self.unique(shard, keys, result)
                        result.rows = len(keys)
                    return None
                fraction = self.report.train_fraction
                keys, subjects, splits = [], [], Counter()
                bad_split, nonfinite = [], Counter()
                for batch in parquet.iter_batches(batch_size=BATCH_ROWS, use_threads=False):  # see storage.fs.arrow
                    batch_keys = batch.column("key").to_pylist()
                    batch_splits = batch.column("split").to_pylist()
                    keys += batch_keys
                    splits.update(batch_splits)
                    if fraction is not None:
                        bad_split += [(k, s) for k, s in zip(batch_keys, batch_splits) if s != split_of(k, fraction)]
                    n_subjects = [len(s) for s in batch.column("subjects").to_pylist()]
                    subjects += n_subjects
                    n_embeddings = [len(v) for v in batch.column("subject_embeddings").to_pylist()]
                    for key, a, b in zip(batch_keys, n_subjects, n_embeddings):
                        if a != b:
                            self.problem(shard, "dims", f"sample {key}: {a} subjects but {b} subject embeddings",
                                         result)
                    for name in FLOAT_COLUMNS:
                        column = batch.column(name)
                        binary = pa.types.is_fixed_size_binary(column.type)
                        values = text_states(column, w) if binary and w is not None else _flat_floats(column)
                        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
                        if bad:
                            nonfinite[name] += bad
        except (OSError, pa.ArrowException) as exc:
            self.problem(shard, "parquet", f"{shard}.parquet cannot be read ({exc})", result)
            return None
        for name, count in nonfinite.items():
            self.problem(shard, "nan", f"column {name} has {count} NaN or infinite value(s)", result)
        for key, split in bad_split[:3]:
            assert fraction is not None  # splits are only checked against a train_fraction
            self.problem(shard, "splits", f"sample {key} is in split {split!r} but its key hashes to "
                                          f"{split_of(key, fraction)!r} (train_fraction {fraction})", result)
        if len(bad_split) > 3:
            self.problem(shard, "splits", f"… and {len(bad_split) - 3} more samples in the wrong split", result)
        result.rows, result.train, result.val = len(keys), splits.get("train", 0), splits.get("val", 0)
        other = set(splits) - {"train", "val"}
        if other:
            self.problem(shard, "splits", f"unknown split value(s) {sorted(other)}", result)
        if stats.get("accepted") is not None and len(keys) != stats["accepted"]:
            self.problem(shard, "rows",
                         f"{shard}.parquet has {len(keys)} rows, _stats.json says {stats['accepted']} accepted", result)
        recorded = stats.get("splits")
        if recorded is not None and {k: v for k, v in recorded.items() if v} != {k: v for k, v in splits.items() if v}:
            self.problem(shard, "splits", f"split counts {dict(splits)} differ from _stats.json's {recorded}", result)
        self.unique(shard, keys, result)
        return keys, subjects

    def schema_ok(self, shard: str, got: pa.Schema, want: pa.Schema, result: ShardResult) -> bool:
        w = self.report.text_width
        name = "text_hidden_states"
        if name in got.names and w is not None and got.field(name).type.equals(legacy_text_states_type(w)):
            got = got.set(got.get_field_index(name), want.field(name))  # the earlier layout, still read
        if got.remove_metadata().equals(want.remove_metadata()):
            return True
        names = set(got.names)
        missing = [n for n in want.names if n not in names]
        if missing:
            self.problem(shard, "schema", f"{shard}.parquet lacks column(s) {', '.join(missing)}", result)
        extra = [n for n in got.names if n not in set(want.names)]
        if extra:
            self.problem(shard, "schema", f"{shard}.parquet has unexpected column(s) {', '.join(extra)}", result)
        d = self.report.embed_dim
        for name in want.names:
            if name not in names or got.field(name).type.equals(want.field(name).type):
                continue
            size, expected = _dim(got.field(name).type), _dim(want.field(name).type)
            if size is not None and expected is not None and size != expected:
                if name == "text_hidden_states":
                    what = f"{size} values per sample, dataset.json says {CONTEXT_LENGTH} × text_width {w} = {expected}"
                else:
                    what = f"dim {size}, dataset.json embed_dim is {d}"
                self.problem(shard, "dims", f"column {name} has {what}", result)
            else:
                self.problem(shard, "schema",
                             f"column {name} has type {got.field(name).type}, expected {want.field(name).type}", result)
        return False

    def _read(self, shard: str, suffix: str, check: str, result: ShardResult) -> pa.Table | None:
        """The shard's `NNNNN{suffix}` Parquet file, or None after a problem saying why it cannot be read."""
        try:
            with self.fs.open(f"{self.base}/{SHARDS}/{shard}{suffix}", "rb") as f, pq.ParquetFile(f) as parquet:
                return parquet.read(use_threads=False)  # on this thread: storage.fs.arrow
        except (OSError, pa.ArrowException) as exc:
            self.problem(shard, check, f"{shard}{suffix} cannot be read ({exc})", result)
            return None

    def rejects(self, shard: str, stats: dict, result: ShardResult) -> None:
        table = self._read(shard, "_rejects.parquet", "rejects", result)
        if table is None:
            return
        schema = table.schema.remove_metadata()
        if not (schema.equals(REJECTS) or schema.equals(LEGACY_REJECTS)):
            self.problem(shard, "schema",
                         f"{shard}_rejects.parquet schema {table.schema.names} is not the rejects schema", result)
            return
        result.rejected = table.num_rows
        if stats.get("rejected") is not None and table.num_rows != stats["rejected"]:
            self.problem(shard, "rows", f"{shard}_rejects.parquet has {table.num_rows} rows, _stats.json says "
                                        f"{stats['rejected']} rejected", result)
        counts = Counter(table.column("stage").to_pylist())
        recorded = {k: v for k, v in (stats.get("rejected_by_stage") or {}).items() if v}
        if stats.get("rejected_by_stage") is not None and dict(counts) != recorded:
            self.problem(shard, "rejects", f"rejects by stage {dict(counts)} differ from _stats.json's {recorded}",
                         result)
        self.unique(shard, table.column("key").to_pylist(), result)

    def kept(self, shard: str, stats: dict, result: ShardResult) -> None:
        """The kept model outputs: readable, of their schema, one row per (input, model stage) the stats count."""
        table = self._read(shard, "_kept.parquet", "kept", result)
        if table is None:
            return
        if not table.schema.remove_metadata().equals(KEPT):
            self.problem(shard, "schema", f"{shard}_kept.parquet schema {table.schema.names} is not the kept "
                                          "outputs' schema", result)
            return
        counted = {stage: stats.get("reused_by_stage", {}).get(stage, 0) + n
                   for stage, n in stats.get("computed_by_stage", {}).items()}
        rows = dict(Counter(table.column("stage").to_pylist()))
        if counted and rows != {k: v for k, v in counted.items() if v}:
            self.problem(shard, "kept", f"{shard}_kept.parquet has rows per stage {rows}, _stats.json counts "
                                        f"{counted}", result)

    def tar(self, shard: str, keys: list[str], subjects: list[int], result: ShardResult) -> None:
        path = f"{self.base}/{SHARDS}/{shard}.tar"
        members: dict[str, set[str]] = {}
        order: list[str] = []
        try:
            # fsspec's unannotated open() is typed as text or binary; "rb" is binary
            with self.fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:  # pyright: ignore[reportCallIssue, reportArgumentType]
                for info in tar:
                    key, _, ext = info.name.partition(".")
                    if key not in members:
                        members[key] = set()
                        order.append(key)
                    members[key].add(ext)
        except (OSError, tarfile.TarError) as exc:
            self.problem(shard, "tar", f"{shard}.tar cannot be read ({exc})", result)
            return
        if order != keys:
            missing, extra = set(keys) - set(order), set(order) - set(keys)
            detail = (f"{len(missing)} Parquet key(s) missing from the tar (e.g. {sorted(missing)[:3]})"
                      if missing else "")
            detail += ("; " if missing and extra else "") + (
                f"{len(extra)} extra key(s) (e.g. {sorted(extra)[:3]})" if extra else "")
            self.problem(shard, "tar",
                         f"{shard}.tar keys differ from {shard}.parquet's: {detail or 'different order'}", result)
        for key, n in zip(keys, subjects):
            want = {"jpg", "json", "mask.png"} | {f"subj{i}.png" for i in range(n)}
            got = members.get(key)
            if got is not None and got != want:
                self.problem(shard, "tar",
                             f"{shard}.tar sample {key} has members {sorted(got)}, expected {sorted(want)}", result)
                break

    def unique(self, shard: str, keys: list[str], result: ShardResult) -> None:
        duplicates = 0
        for key in keys:
            other = self.keys.get(key)
            if other is None:
                self.keys[key] = shard
                continue
            duplicates += 1
            if duplicates <= 3:
                where = "twice in this shard" if other == shard else f"also in shard {other}"
                self.problem(shard, "keys", f"duplicate key {key} ({where})", result)
        if duplicates > 3:
            self.problem(shard, "keys", f"… {duplicates - 3} more duplicate keys", result)

    # -- across shards ---------------------------------------------------------------------------------------------

    def proportions(self) -> None:
        t, p = self.report.totals, self.report.train_fraction
        n = t["train"] + t["val"]
        if p is None or n == 0:
            return
        observed = t["train"] / n
        tolerance = self.split_tolerance
        if tolerance is None:
            tolerance = SIGMAS * math.sqrt(p * (1 - p) / n) + 1 / n
        if abs(observed - p) > tolerance:
            self.problem(None, "proportion", f"train fraction {observed:.3f} ({t['train']} of {n}) is more than "
                                             f"{tolerance:.3f} from the configured {p}")


def validate(root: str, split_tolerance: float | None = None) -> Report:
    """Check the dataset at `root` (a path or an fsspec URL); the report lists every problem found."""
    checker = _Checker(str(root), split_tolerance)
    meta = checker.meta()
    if meta is None:
        return checker.report
    complete, incomplete = checker.shard_names()
    if not complete:
        checker.problem(None, "shards", f"no complete shard (no {SHARDS}/NNNNN_stats.json) in {root}")
    for shard in incomplete:
        checker.report.warnings.append(f"shard {shard} is incomplete (no {shard}_stats.json): readers skip it; "
                                       "rerun build-dataset with the same --output to finish it")
    for shard in complete:
        checker.shard(shard)
    checker.proportions()
    return checker.report


def _dim(dtype: pa.DataType) -> int | None:
    """The fixed size of a fixed_size_list (or of the fixed_size_list inside a list), or of the float16 text states
    in a fixed_size_binary."""
    if pa.types.is_fixed_size_binary(dtype):
        return dtype.byte_width // 2
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        dtype = dtype.value_type
    return dtype.list_size if pa.types.is_fixed_size_list(dtype) else None


def _flat_floats(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Every float value of a (nested) list column, flattened."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    while (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
           or pa.types.is_fixed_size_list(column.type)):
        column = column.flatten()
    return column.to_numpy(zero_copy_only=False)


class DatasetInvalid(Exception):
    """Raised by the validate-dataset flow (its failure reason); `report` is the report's `to_dict()`."""

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report or {}
