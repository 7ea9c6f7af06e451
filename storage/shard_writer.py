"""Writes one shard of the contract: features Parquet, WebDataset tar, rejects Parquet, the kept model outputs
(storage/kept.py), then `_stats.json`.

Every file is staged (locally: a temporary name, renamed into place; on object stores: its final name, see
`storage/layout.py`); `_stats.json` (the completeness marker, with the sha256 of the other files as stored) goes
last. A crash at any point leaves no shard that a reader would take as complete, and a rerun rebuilds it from
scratch. The root is a local path or an fsspec URL.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import time
from typing import BinaryIO, cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from lambda_eclipse.required import required
from storage import thumbnail
from storage.fs import Location, join, makedirs, open_file, remove
from storage.kept import kept_rows, write_kept
from storage.layout import (
    DATA_FILES,
    SHARDS,
    publish,
    shard_names,
    shard_paths,
    staging_path,
    write_json_atomic,
)
from storage.sample import Sample
from storage.schema import REJECTS, feature_table, photo_box

ROW_GROUP = 256


def split_of(key: str, train_fraction: float) -> str:
    """Deterministic split from the key's hash: stable across reruns, shard sizes and worker counts."""
    value = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2**32
    return "train" if value < train_fraction else "val"


def _png(array: np.ndarray) -> bytes:
    """PNG of a label mask (H, W) or an RGB crop (H, W, 3), losslessly, at a fast compression: the masks at zlib
    level 1 (PIL); crops, photographic, through OpenCV with zlib's run-length strategy, which is both faster and
    smaller on them than PIL's default filters and level."""
    if array.ndim == 3:
        import cv2

        params = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
        ok, encoded = cv2.imencode(".png", cv2.cvtColor(array, cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise ValueError(f"cannot encode a {array.shape} {array.dtype} PNG")
        return encoded.tobytes()
    # A label mask as a palette PNG with the identity grey palette: read as indices (np.asarray) or as grey
    # levels (convert("L"), webdataset's "l8") it gives the labels; PNG writers filter palette images with "none",
    # which makes zlib level 1 twice as fast here as on the same mask in mode L.
    image = Image.frombytes("P", (array.shape[1], array.shape[0]), np.ascontiguousarray(array, np.uint8).tobytes())
    image.putpalette(_GREY_PALETTE)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


_GREY_PALETTE = [v for i in range(256) for v in (i, i, i)]


JPEG_QUALITY = 95


def _jpg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return buf.getvalue()


def photo_jpeg(sample: Sample) -> tuple[bytes, dict]:
    """The bytes of <key>.jpg and what the sample JSON says of them: the input's own bytes ("original"), or the one
    re-encode the decode stage made and why ("reencoded"); a sample that carries no bytes (built in memory) has its
    image encoded here."""
    if sample.jpeg is not None:
        if sample.reencoded is None:
            return sample.jpeg, {"source": "original"}
        return sample.jpeg, {"source": "reencoded", "reason": sample.reencoded, "quality": JPEG_QUALITY}
    image = required(sample.image, "image")
    reason = "no input bytes: encoded from the decoded image"
    return _jpg(image), {"source": "reencoded", "reason": reason, "quality": JPEG_QUALITY}


def _label_mask(sample: Sample, image: np.ndarray) -> np.ndarray:
    """0 = background, i + 1 = subject i; a higher-logit subject wins where masks overlap. At the masks' own
    resolution: the stages' image (tasks/decode.py's working resolution, about SAM's), not the photo's."""
    labels = np.zeros(image.shape[:2], np.uint8)
    for i in reversed(range(len(sample.subjects))):
        labels[required(sample.subjects[i].mask, "subject mask")] = i + 1
    return labels


class HashingFile(io.RawIOBase):
    """A write-only file that hashes what passes through it, so a shard's sha256 costs no second read."""

    def __init__(self, raw, path: Location):
        super().__init__()
        self._raw = raw
        self.path = path
        self._digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self._digest.update(view)
        with self._naming_the_file():
            self._raw.write(view)
        self.size += len(view)
        return len(view)

    def tell(self) -> int:
        return self.size

    def close(self) -> None:
        if not self.closed:
            with self._naming_the_file():
                self._raw.close()
        super().close()

    @contextlib.contextmanager
    def _naming_the_file(self):
        """A full or failing disk raises OSError without the file's name (writes go through a file object); the
        error that stops a build must say where."""
        try:
            yield
        except OSError as exc:
            if exc.filename:
                raise
            raise OSError(exc.errno, exc.strerror or str(exc), str(self.path)) from exc

    def digest(self) -> dict:
        return {"sha256": self._digest.hexdigest(), "bytes": self.size}


def parquet_options(schema: pa.Schema) -> dict:
    """Encodings for `pq.ParquetWriter`. The vector columns (embeddings and the binary text states) never repeat and
    barely compress: they are stored plain, uncompressed and without min/max statistics, which the prior's loader
    reads at memory speed; dictionary encoding and Snappy made Arrow decode them at ~480 rows/s per core. The scalar
    columns (keys, captions, sizes) keep dictionary encoding, Snappy and statistics."""
    scalars = [f.name for f in schema if not (pa.types.is_nested(f.type) or pa.types.is_fixed_size_binary(f.type))]
    return {
        "use_dictionary": scalars,
        "write_statistics": scalars,
        "compression": {f.name: "snappy" if f.name in scalars else "none" for f in schema},
    }


class ShardWriter:
    def __init__(self, root: Location, shard: int, schema: pa.Schema, train_fraction: float, stage_names: list[str],
                 fingerprints: dict[str, str] | None = None):
        """`fingerprints`: each model stage's (tasks/base.py), what its kept outputs are valid for (none: samples
        made without the model stages, as the synthetic datasets are)."""
        self.paths = shard_paths(root, shard)
        self._staged = {name: staging_path(self.paths[name]) for name in DATA_FILES}
        makedirs(join(root, SHARDS))
        self.shard = shard
        self.schema = schema
        self.train_fraction = train_fraction
        self.stage_names = stage_names
        self._files = {
            name: HashingFile(open_file(self._staged[name], "wb"), self._staged[name]) for name in DATA_FILES
        }
        self._parquet = pq.ParquetWriter(self._files["parquet"], schema, **parquet_options(schema))
        from webdataset.writer import TarWriter  # webdataset imports torch: only where shards are written

        self._tar = TarWriter(cast(BinaryIO, self._files["tar"]))  # TarWriter leaves closing the file to us
        self._rows: list[Sample] = []
        self._rejects: list[dict] = []
        self._kept: list[dict] = []
        self.fingerprints = fingerprints = fingerprints or {}
        self._reused = dict.fromkeys(fingerprints, 0)
        self._computed = dict.fromkeys(fingerprints, 0)
        self._subjects = 0
        self._thumbnails: dict[str, int] = {}  # thumbnails kept per stage: a bounded few per shard
        self._splits = {"train": 0, "val": 0}
        self._seconds: dict[str, float] = {}
        self.inputs = 0
        self.accepted = 0
        self._dropped_subjects = 0  # removed from samples that were still accepted (Sample.dropped_subjects)
        self._start = time.perf_counter()

    def add(self, sample: Sample) -> None:
        self.inputs += 1
        for stage, seconds in sample.seconds.items():
            self._seconds[stage] = self._seconds.get(stage, 0.0) + seconds
        self._kept += kept_rows(sample, self.fingerprints)
        for stage, record in sample.kept.items():
            (self._reused if record["reused"] else self._computed)[stage] += 1
        if sample.reject is not None:
            reject = sample.reject
            shown = self._thumbnails.get(reject.stage, 0)
            keep = sample.thumbnail is not None and shown < thumbnail.PER_STAGE
            self._thumbnails[reject.stage] = shown + keep
            self._rejects.append({"key": sample.key, "source": sample.source, "stage": reject.stage,
                                  "reason": reject.reason, "thumbnail": sample.thumbnail if keep else None})
            return
        self.accepted += 1
        self._subjects += len(sample.subjects)
        self._dropped_subjects += len(sample.dropped_subjects)
        image = required(sample.image, "image")
        split = split_of(sample.key, self.train_fraction)
        self._splits[split] += 1
        jpeg, provenance = photo_jpeg(sample)
        width, height = sample.photo_size()
        sx, sy = sample.box_scale()
        labels = _label_mask(sample, image)
        member = {
            "__key__": sample.key,
            "jpg": jpeg,
            "json": json.dumps(
                {
                    "key": sample.key,
                    "source": sample.source,
                    "split": split,
                    "width": width,
                    "height": height,
                    "jpeg": provenance,
                    "mask_size": list(labels.shape),
                    "caption": sample.caption,
                    "source_caption": sample.source_caption,
                    "nouns": [n.text for n in sample.nouns],
                    "subjects": [
                        {"noun": t.noun, "box": [round(float(x), 2) for x in photo_box(t.box, sx, sy)],
                         "logit": round(float(t.logit), 4)}
                        for t in sample.subjects
                    ],
                    "dropped_subjects": sample.dropped_subjects,
                }
            ).encode(),
            "mask.png": _png(labels),
        }
        for i, subject in enumerate(sample.subjects):
            member[f"subj{i}.png"] = _png(required(subject.crop, "subject crop"))
        self._tar.write(member)
        self._rows.append(sample)
        if len(self._rows) >= ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            splits = [split_of(s.key, self.train_fraction) for s in self._rows]
            self._parquet.write_table(feature_table(self._rows, splits, self.schema))
            self._rows = []

    def close(self, unit: dict) -> dict:
        """Finish every file, publish it under its final name, then write `_stats.json`; returns the stats."""
        self._flush()
        self._parquet.close()
        self._tar.close()
        pq.write_table(pa.Table.from_pylist(self._rejects, schema=REJECTS), self._files["rejects"])
        write_kept(self._kept, self._files["kept"])
        for name in DATA_FILES:
            self._files[name].close()
            publish(self._staged[name], self.paths[name])
        elapsed = time.perf_counter() - self._start
        rejected_by_stage = dict.fromkeys(self.stage_names, 0)
        for r in self._rejects:
            rejected_by_stage[r["stage"]] = rejected_by_stage.get(r["stage"], 0) + 1
        funnel, remaining = [], self.inputs
        for name in self.stage_names:
            funnel.append({"stage": name, "in": remaining, "rejected": rejected_by_stage[name]})
            remaining -= rejected_by_stage[name]
        stats = {
            "shard": self.shard,
            "unit": unit,
            "inputs": self.inputs,
            "accepted": self.accepted,
            "rejected": len(self._rejects),
            "rejected_by_stage": rejected_by_stage,
            "dropped_subjects": self._dropped_subjects,
            "subjects": self._subjects,
            # per model stage: outputs taken from an earlier build's kept outputs (--reuse), and computed here
            "reused_by_stage": self._reused,
            "computed_by_stage": self._computed,
            "funnel": funnel,
            "splits": self._splits,
            "seconds": round(elapsed, 3),
            "images_per_second": round(self.inputs / elapsed, 3) if elapsed > 0 else None,
            "stage_seconds": {k: round(v, 4) for k, v in self._seconds.items()},
            "files": {shard_names(self.shard)[name]: self._files[name].digest() for name in DATA_FILES},
        }
        write_json_atomic(self.paths["stats"], stats)
        return stats

    def abort(self) -> None:
        """Drop the staged files of a failed attempt (the stats marker was never written)."""
        for closer in (self._parquet.close, self._tar.close, *(f.close for f in self._files.values())):
            try:
                closer()
            except Exception:  # noqa: BLE001 - best effort on an already failing path
                pass
        for name in DATA_FILES:
            remove(self._staged[name])
