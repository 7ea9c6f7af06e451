"""Model outputs kept beside each shard (`shards/NNNNN_kept.parquet`), and their reuse by a later build.

Every input that reached a model stage leaves one row per such stage: the input's content hash (tasks/decode.py), the
stage, the stage's fingerprint (tasks/base.py: the keys its output depends on, its model, its version and the
fingerprint of the stages before it), the reject reason where it rejected the input, and its output as JSON
(caption; nouns; boxes with scores and phrases; masks as COCO RLE; the subjects' CLIP token positions). The
embeddings are not copied: they are the shard's feature row, which the loader joins by key.

`build-dataset --reuse DIR_OLD` reads them back per unit: the unit task gets the old shards that held its inputs (by
input path, from the two manifests: planning already lists every input), and takes a stage's output for an input
when both the content hash and the fingerprint agree, so changed photos and changed parameters recompute, and
everything else comes from DIR_OLD.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lambda_eclipse.errors import UserError
from storage.fs import Location, is_file, read_bytes
from storage.layout import complete_shards, read_json, shard_paths
from storage.manifest import read_manifest
from storage.sample import Sample
from storage.schema import FEATURE_ARRAYS, text_states
from storage.sources import WorkUnit

KEPT = pa.schema([("key", pa.string()), ("content", pa.string()), ("stage", pa.string()),
                  ("fingerprint", pa.string()), ("reject", pa.string()), ("value", pa.string())])
FEATURES = "features"  # the stage whose kept arrays are the feature row


def kept_rows(sample: Sample, fingerprints: dict[str, str]) -> list[dict]:
    """The sample's kept rows, one per model stage it reached (none for an input no model saw)."""
    return [{"key": sample.key, "content": sample.content, "stage": stage, "fingerprint": fingerprints[stage],
             "reject": record["reject"], "value": json.dumps(record["value"], separators=(",", ":"))}
            for stage, record in sample.kept.items()]


def write_kept(rows: list[dict], file) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=KEPT), file, compression="zstd")


def _table(path: Location, columns: list[str] | None = None) -> pa.Table:
    # bytes first, parsed on this thread (storage/manifest.py says why)
    return pq.read_table(io.BytesIO(read_bytes(path)), columns=columns)


@dataclass
class ReuseSource:
    """Where a unit's kept outputs are: the earlier dataset and its shards that held the unit's inputs."""

    root: str
    shards: list[int]


class KeptOutputs:
    """The kept records of one unit's inputs, from the earlier dataset's shards that held them."""

    def __init__(self, records: dict[tuple[str, str], dict]):
        self._records = records

    def get(self, content: str | None, stage: str) -> dict | None:
        return None if content is None else self._records.get((content, stage))

    def __len__(self) -> int:
        return len(self._records)

    @classmethod
    def load(cls, source: ReuseSource, fingerprints: dict[str, str]) -> KeptOutputs:
        """The records whose fingerprint is this build's for their stage; accepted features records get the
        feature row's arrays."""
        records: dict[tuple[str, str], dict] = {}
        for shard in source.shards:
            paths = shard_paths(source.root, shard)
            if not is_file(paths["kept"]):
                continue
            rows = [r for r in _table(paths["kept"]).to_pylist() if fingerprints.get(r["stage"]) == r["fingerprint"]]
            accepted = {r["key"] for r in rows if r["stage"] == FEATURES and r["reject"] is None}
            arrays = _feature_arrays(paths["parquet"], accepted) if accepted else {}
            for r in rows:
                record = {"reject": r["reject"], "value": json.loads(r["value"])}
                if r["stage"] == FEATURES and r["reject"] is None:
                    if r["key"] not in arrays:  # a kept record without its feature row: computed again
                        continue
                    record["arrays"] = arrays[r["key"]]
                records[(r["content"], r["stage"])] = record
        return cls(records)


def _feature_arrays(path: Location, keys: set[str]) -> dict[str, dict]:
    """The feature row's arrays of `keys`, as `Sample.features` holds them, plus the subjects' embeddings."""
    table = _table(path, ["key", *FEATURE_ARRAYS, "subject_embeddings"])
    table = table.take([i for i, key in enumerate(table["key"].to_pylist()) if key in keys])
    width = int(table.schema.metadata[b"text_width"])
    states = text_states(table["text_hidden_states"], width)
    columns = {name: table[name].to_pylist() for name in ("key", "subject_embeddings")}
    out = {}
    dtypes = {"target_embedding": "float32", "edge_embedding": "float32", "text_embedding": "float32",
              "token_ids": "int32", "attention_mask": "int8"}
    vectors = {name: np.asarray(table[name].to_pylist(), dtype) for name, dtype in dtypes.items()}
    for i, key in enumerate(columns["key"]):
        subjects = columns["subject_embeddings"][i]
        out[key] = {name: vectors[name][i] for name in dtypes} | {
            "text_hidden_states": np.array(states[i]),
            "subject_embeddings": [np.asarray(e, np.float32) for e in subjects],
        }
    return out


def _kept_units(old: Location) -> list[WorkUnit]:
    """The units of `old` whose shards are complete, after checking that it keeps model outputs (one line
    otherwise)."""
    units = read_manifest(old)
    if units is None:
        raise UserError(f"--reuse {old}: not a dataset directory (no manifest.parquet); pass a dataset that "
                        "build-dataset wrote")
    shards = complete_shards(old)
    if not shards:
        raise UserError(f"--reuse {old}: no complete shard to reuse; finish that build first, or build from scratch")
    stats = read_json(shard_paths(old, shards[0])["stats"])
    if not any(name.endswith("_kept.parquet") for name in stats.get("files", {})):
        raise UserError(f"--reuse {old}: its shards keep no model outputs (built before build-dataset kept them); "
                        "build from scratch, then re-filter the new dataset with --reuse")
    complete = set(shards)
    return [unit for unit in units if unit.shard in complete]


def reuse_sources(old: Location, units: list[WorkUnit]) -> dict[int, ReuseSource]:
    """For each unit (by shard), the complete shards of the earlier dataset `old` that held any of its inputs (by
    input path; the worker checks each input's content hash)."""
    where: dict[tuple[str, str], int] = {}
    for unit in _kept_units(old):
        for relative, _ in unit.files:
            where[(unit.root, relative)] = unit.shard
    sources = {}
    for unit in units:
        shards = sorted({where[k] for k in ((unit.root, relative) for relative, _ in unit.files) if k in where})
        if shards:
            sources[unit.shard] = ReuseSource(str(old), shards)
    return sources
