import json
from collections.abc import Iterable
from typing import cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import featured_sample
from webdataset.compat import WebDataset

from lambda_eclipse.errors import UserError
from storage.layout import complete_shards, is_complete, sha256_file, shard_names, shard_paths, write_json_atomic
from storage.reader import iter_samples, load_dataset_meta
from storage.sample import Sample, SourceRef
from storage.schema import feature_schema
from storage.shard_writer import ShardWriter, split_of

STAGES = ["decode", "resolution", "caption"]


def _read(tar, decode: str) -> Iterable[dict]:
    """The shard tar through webdataset, as a user reads it (its fluid interface is untyped)."""
    return cast(Iterable[dict], WebDataset(str(tar), shardshuffle=False).decode(decode))


def _meta(root, d=8, w=8):
    write_json_atomic(root / "dataset.json", {"embed_dim": d, "text_width": w, "profile": "tiny"})


def _write(root, shard, samples, rejects=()):
    writer = ShardWriter(root, shard, feature_schema(8, 8), 0.8, STAGES)
    for s in samples:
        writer.add(s)
    for key, stage in rejects:
        r = Sample(key=key, source=f"/data/{key}", ref=SourceRef("x"))
        r.reject_at(stage, f"{stage} says no")
        writer.add(r)
    return writer.close({"description": "test", "fingerprint": "f"})


def test_round_trip_through_pyarrow_reader_and_webdataset(tmp_path):
    _meta(tmp_path)
    samples = [featured_sample(f"k{i}") for i in range(5)]
    stats = _write(tmp_path, 0, samples, rejects=[("r0", "decode"), ("r1", "caption")])
    paths = shard_paths(tmp_path, 0)

    assert stats["inputs"] == 7 and stats["accepted"] == 5 and stats["rejected"] == 2
    assert stats["rejected_by_stage"] == {"decode": 1, "resolution": 0, "caption": 1}
    assert [(f["stage"], f["in"], f["rejected"]) for f in stats["funnel"]] == [
        ("decode", 7, 1), ("resolution", 6, 0), ("caption", 6, 1)
    ]
    for name in ("parquet", "tar", "rejects"):
        assert stats["files"][shard_names(0)[name]]["sha256"] == sha256_file(paths[name])

    table = pq.read_table(paths["parquet"])
    assert table.num_rows == 5
    assert table.schema.field("text_hidden_states").type == pa.binary(77 * 8 * 2)  # float16 bytes (storage/schema.py)
    group = pq.ParquetFile(paths["parquet"]).metadata.row_group(0)
    encoding = {c.path_in_schema: c for c in map(group.column, range(group.num_columns))}
    assert encoding["text_hidden_states"].compression == "UNCOMPRESSED"  # read at memory speed by the prior's loader
    assert "RLE_DICTIONARY" not in encoding["text_hidden_states"].encodings
    assert encoding["key"].compression == "SNAPPY" and "RLE_DICTIONARY" in encoding["key"].encodings
    assert table.column("key").to_pylist() == [f"k{i}" for i in range(5)]

    rows = list(iter_samples(tmp_path))
    for row, s in zip(rows, samples):
        np.testing.assert_array_equal(row["text_hidden_states"], s.features["text_hidden_states"])
        np.testing.assert_array_equal(row["target_embedding"], s.features["target_embedding"])
        np.testing.assert_array_equal(row["token_ids"], s.features["token_ids"])
        assert row["subject_embeddings"].shape == (2, 8)
        np.testing.assert_array_equal(row["subject_embeddings"][1], s.subjects[1].embedding)
        assert [t["noun"] for t in row["subjects"]] == ["dog", "cat"]
        assert row["subjects"][0]["token_positions"] == [2]
        assert row["split"] == split_of(s.key, 0.8)

    rejects = pq.read_table(paths["rejects"]).to_pylist()
    assert [(r["key"], r["stage"], r["reason"]) for r in rejects] == [
        ("r0", "decode", "decode says no"), ("r1", "caption", "caption says no")
    ]

    members = list(_read(paths["tar"], "rgb8"))
    assert [m["__key__"] for m in members] == [f"k{i}" for i in range(5)]
    first = members[0]
    image = samples[0].image
    assert image is not None and first["jpg"].shape == image.shape
    assert first["subj0.png"].shape == (16, 16, 3)
    meta = first["json"]
    assert meta["caption"] == "a dog and a cat on a sofa" and [s["noun"] for s in meta["subjects"]] == ["dog", "cat"]
    mask = next(iter(_read(paths["tar"], "l8")))["mask.png"]
    assert set(np.unique(mask)) == {0, 1, 2}
    assert mask[5, 5] == 1  # overlap of subjects 0 and 1: the higher-logit subject wins


def test_split_is_deterministic_and_near_the_fraction():
    keys = [f"{i:08x}" for i in range(4000)]
    splits = [split_of(k, 0.8) for k in keys]
    assert splits == [split_of(k, 0.8) for k in keys]
    assert 0.77 < splits.count("train") / len(keys) < 0.83


def test_reader_filters_split_and_columns_and_skips_incomplete_shards(tmp_path):
    _meta(tmp_path)
    _write(tmp_path, 0, [featured_sample(f"a{i}") for i in range(20)])
    writer = ShardWriter(tmp_path, 1, feature_schema(8, 8), 0.8, STAGES)
    writer.add(featured_sample("incomplete"))  # never closed: no stats, so not part of the dataset
    assert complete_shards(tmp_path) == [0] and not is_complete(tmp_path, 1)
    train = list(iter_samples(tmp_path, split="train", columns=["key"]))
    val = list(iter_samples(tmp_path, split="val", columns=["key"]))
    assert len(train) + len(val) == 20 and set(train[0]) == {"key", "split"}
    assert all(split_of(r["key"], 0.8) == "train" for r in train)


def test_abort_leaves_nothing_behind(tmp_path):
    writer = ShardWriter(tmp_path, 3, feature_schema(8, 8), 0.8, STAGES)
    writer.add(featured_sample("x"))
    writer.abort()
    assert list((tmp_path / "shards").iterdir()) == []


def test_not_a_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="is not a λ-ECLIPSE dataset"):
        load_dataset_meta(tmp_path)


def test_atomic_json_has_no_temporary_left(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


# --- what the tar holds (issue 19): the photo's own bytes or one re-encode, masks at their own resolution ---


def _tar_members(tar) -> dict[str, dict[str, bytes]]:
    import tarfile

    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tar) as t:
        for info in t:
            key, _, ext = info.name.partition(".")
            reader = t.extractfile(info)
            assert reader is not None
            members.setdefault(key, {})[ext] = reader.read()
    return members


def test_the_tar_keeps_the_photo_bytes_and_says_so_or_why_it_reencoded(tmp_path):
    import io

    from PIL import Image

    _meta(tmp_path)
    kept, converted = featured_sample("kept"), featured_sample("converted")
    original = b"\xff\xd8 the input's own JPEG bytes \xff\xd9"
    kept.jpeg, kept.width, kept.height = original, 112, 96  # the photo is twice the stages' 56 × 48 image
    buf = io.BytesIO()
    Image.new("RGB", (112, 96), (9, 9, 9)).save(buf, "JPEG", quality=95)
    converted.jpeg, converted.reencoded, converted.width, converted.height = buf.getvalue(), "PNG is not JPEG", 112, 96
    _write(tmp_path, 0, [kept, converted])
    members = _tar_members(shard_paths(tmp_path, 0)["tar"])
    assert members["kept"]["jpg"] == original
    assert members["converted"]["jpg"] == buf.getvalue()
    meta = json.loads(members["kept"]["json"])
    assert meta["jpeg"] == {"source": "original"}
    assert (meta["width"], meta["height"], meta["mask_size"]) == (112, 96, [48, 56])
    assert meta["subjects"][0]["box"] == [10.0, 10.0, 50.0, 40.0]  # found at 56 × 48, stored in photo pixels
    assert json.loads(members["converted"]["json"])["jpeg"] == {
        "source": "reencoded", "reason": "PNG is not JPEG", "quality": 95
    }
    row = next(iter(iter_samples(tmp_path)))
    assert (row["width"], row["height"]) == (112, 96)
    assert row["subjects"][0]["box"] == [10.0, 10.0, 50.0, 40.0]


def test_mask_round_trip_at_its_own_resolution(tmp_path):
    import io

    from PIL import Image

    _meta(tmp_path)
    sample = featured_sample("m")
    sample.width, sample.height = 224, 192  # the photo; masks stay at the stages' 56 × 48
    _write(tmp_path, 0, [sample])
    parts = _tar_members(shard_paths(tmp_path, 0)["tar"])["m"]
    labels = np.asarray(Image.open(io.BytesIO(parts["mask.png"])))
    assert labels.shape == (48, 56) and labels.dtype == np.uint8
    first, second = (s.mask for s in sample.subjects)
    assert first is not None and second is not None
    np.testing.assert_array_equal(labels == 1, first)  # the higher-logit subject wins the overlap
    np.testing.assert_array_equal(labels == 2, second & ~first)
    crop = np.asarray(Image.open(io.BytesIO(parts["subj0.png"])))
    np.testing.assert_array_equal(crop, sample.subjects[0].crop)  # lossless


def test_a_dataset_of_the_earlier_layout_still_reads_validates_and_draws(tmp_path):
    """tests/data/old_layout_dataset was written by the shard writer before issue 19 (c71a9d0): a q95 re-encode of
    the decoded image, a mask PNG of the photo's size, no width/height/jpeg/mask_size in the sample JSON."""
    import shutil
    from pathlib import Path

    from storage.report import contact_sheet
    from storage.validate import validate

    root = tmp_path / "old"
    shutil.copytree(Path(__file__).parent / "data" / "old_layout_dataset", root)
    assert validate(str(root)).ok
    rows = list(iter_samples(root))
    assert [r["key"] for r in rows] == [f"old{i}" for i in range(4)]
    assert rows[0]["subject_embeddings"].shape == (2, 8)
    meta = json.loads(_tar_members(shard_paths(root, 0)["tar"])["old0"]["json"])
    assert "jpeg" not in meta
    assert contact_sheet(str(root), [0], str(tmp_path / "sheet.png")) is not None


def test_contact_sheet_draws_masks_smaller_than_the_photo(tmp_path):
    import io

    from PIL import Image

    from storage.report import contact_sheet

    _meta(tmp_path)
    sample = featured_sample("c")
    buf = io.BytesIO()
    Image.new("RGB", (112, 96), (9, 9, 9)).save(buf, "JPEG")
    sample.jpeg, sample.width, sample.height = buf.getvalue(), 112, 96
    _write(tmp_path, 0, [sample])
    assert contact_sheet(str(tmp_path), [0], str(tmp_path / "sheet.png")) is not None
