"""Inputs and outputs as fsspec URLs: sources, shards and the prior's reader on memory:// and file://, the
stats-last commit marker on a store without rename, one-line errors for bad URLs, and the flow on file:// URLs."""

import errno
import importlib.util
import io
import json
import os
import tarfile
import uuid

import fsspec
import numpy as np
import pytest
import torch
from conftest import featured_sample
from fsspec.registry import known_implementations
from test_prior_data import write_dataset

from lambda_eclipse.errors import UserError
from lambda_eclipse.synthetic import photo, write_photos
from prior.config import load_train_config
from prior.data import PriorBatches, open_dataset
from prior.driver import run_training
from prior.prepare import prepare_training
from storage import shard_writer
from storage.fs import join
from storage.layout import (
    complete_shards,
    is_complete,
    sha256_file,
    shard_names,
    shard_paths,
    write_json_atomic,
)
from storage.reader import iter_samples
from storage.schema import feature_schema
from storage.shard_writer import ShardWriter
from storage.sources import plan_inputs
from tasks.plan import prepare_build

EXT = (".jpg", ".png")
STAGES = ["decode", "resolution", "caption"]
MEMORY = fsspec.filesystem("memory")


@pytest.fixture
def mem():
    """A fresh memory:// folder, removed afterwards (the memory filesystem is one store for the whole process)."""
    root = f"memory://test-{uuid.uuid4().hex[:8]}"
    yield root
    if MEMORY.exists(root):
        MEMORY.rm(root, recursive=True)


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    photo(seed, 32, 24).save(buf, format="JPEG")
    return buf.getvalue()


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _write_shard(root, shard, samples):
    writer = ShardWriter(root, shard, feature_schema(8, 8), 0.8, STAGES)
    for s in samples:
        writer.add(s)
    return writer.close({"description": "test", "fingerprint": "f"})


# --- sources -------------------------------------------------------------------------------------------------------


def test_a_memory_folder_is_listed_recursively_and_read_by_url(mem):
    files = {"b/2.jpg": _jpeg(2), "a/1.PNG": _jpeg(1), "c.jpg": _jpeg(3), "a/z/3.jpg": _jpeg(4), "notes.txt": b"x"}
    for rel, data in files.items():
        MEMORY.pipe_file(f"{mem}/photos/{rel}", data)
    plan = plan_inputs([f"{mem}/photos/"], unit_size=2, extensions=EXT)
    units, skipped = plan.units, plan.skipped
    sources = [s.source for u in units for s in u.iter_samples(EXT)]
    assert sources == [f"{mem}/photos/{rel}" for rel in ("a/1.PNG", "a/z/3.jpg", "b/2.jpg", "c.jpg")]
    assert [u.description for u in units] == [f"folder {mem}/photos [0:2]", f"folder {mem}/photos [2:4]"]
    assert skipped == 1
    for s in (s for u in units for s in u.iter_samples(EXT)):
        assert s.ref.read() == files[s.source.removeprefix(f"{mem}/photos/")]


def test_memory_tars_are_indexed_with_captions_and_byte_ranges(mem):
    jpgs = [_jpeg(i) for i in range(3)]
    MEMORY.pipe_file(f"{mem}/tars/00000.tar", _tar({"0.jpg": jpgs[0], "0.txt": b"a dog", "1.jpg": jpgs[1],
                                                    "1.json": json.dumps({"caption": "a cat"}).encode()}))
    MEMORY.pipe_file(f"{mem}/tars/00001.tar", _tar({"2.png": jpgs[2]}))
    units = plan_inputs([f"{mem}/tars"], 1000, EXT).units
    assert [u.description for u in units] == [f"tar {mem}/tars/00000.tar", f"tar {mem}/tars/00001.tar"]
    samples = [s for u in units for s in u.iter_samples(EXT)]
    assert [s.source_caption for s in samples] == ["a dog", "a cat", None]
    assert [s.read() for s in samples] == [s.ref.read() for s in samples] == jpgs  # streamed, and by byte range
    assert samples[0].source == f"{mem}/tars/00000.tar#0.jpg"
    (unit,) = plan_inputs([f"{mem}/tars/00001.tar"], 1000, EXT).units
    assert next(unit.iter_samples(EXT)).read() == jpgs[2]


def test_file_urls_are_the_local_filesystem_with_the_same_keys(tmp_path):
    write_photos(tmp_path / "photos", 3, size=32)
    (tmp_path / "one.tar").write_bytes(_tar({"0.jpg": _jpeg(0)}))
    for plain in (tmp_path / "photos", tmp_path / "one.tar"):
        by_path = plan_inputs([str(plain)], 1000, EXT).units
        by_url = plan_inputs([plain.as_uri()], 1000, EXT).units
        assert [(s.key, s.source) for u in by_url for s in u.iter_samples(EXT)] == [
            (s.key, s.source) for u in by_path for s in u.iter_samples(EXT)
        ]
        assert all(s.read() for u in by_url for s in u.iter_samples(EXT))


# --- shards on a store without rename ------------------------------------------------------------------------------


def test_a_shard_written_to_memory_reads_back(mem):
    root = f"{mem}/data"
    write_json_atomic(join(root, "dataset.json"), {"embed_dim": 8, "text_width": 8, "profile": "tiny"})
    samples = [featured_sample(f"k{i}") for i in range(5)]
    stats = _write_shard(root, 0, samples)
    paths = shard_paths(root, 0)
    assert all(str(p).startswith(f"{mem}/data/shards/") for p in paths.values())
    # no temporary names: without rename, files are written under their final names, the stats last
    assert sorted(p.rsplit("/", 1)[-1] for p in MEMORY.ls(f"{root}/shards", detail=False)) == [
        "00000.parquet", "00000.tar", "00000_kept.parquet", "00000_rejects.parquet", "00000_stats.json"
    ]
    for name in ("parquet", "tar", "rejects", "kept"):
        digest = {"sha256": sha256_file(paths[name]), "bytes": MEMORY.size(paths[name])}
        assert stats["files"][shard_names(0)[name]] == digest
    assert complete_shards(root) == [0]
    rows = list(iter_samples(root))
    assert [r["key"] for r in rows] == [s.key for s in samples]
    for row, s in zip(rows, samples):
        np.testing.assert_array_equal(row["text_hidden_states"], s.features["text_hidden_states"])
        np.testing.assert_array_equal(row["subject_embeddings"][1], s.subjects[1].embedding)
    with tarfile.open(fileobj=io.BytesIO(MEMORY.cat_file(paths["tar"]))) as tar:
        assert {m.name.split(".")[0] for m in tar} == {s.key for s in samples}


def test_on_memory_a_shard_without_stats_is_incomplete_and_rebuilt(mem, monkeypatch):
    root = f"{mem}/data"
    write_json_atomic(join(root, "dataset.json"), {"embed_dim": 8, "text_width": 8, "profile": "tiny"})
    paths = shard_paths(root, 0)
    writer = ShardWriter(root, 0, feature_schema(8, 8), 0.8, STAGES)
    writer.add(featured_sample("a"))
    assert not is_complete(root, 0) and complete_shards(root) == []

    def killed(*args, **kwargs):  # the process dies after the data files, before the stats
        raise OSError("killed")

    monkeypatch.setattr(shard_writer, "write_json_atomic", killed)
    with pytest.raises(OSError, match="killed"):
        writer.close({"description": "test"})
    assert MEMORY.isfile(paths["parquet"]) and MEMORY.isfile(paths["tar"]) and not MEMORY.exists(paths["stats"])
    assert not is_complete(root, 0) and complete_shards(root) == [] and list(iter_samples(root)) == []
    monkeypatch.undo()

    _write_shard(root, 0, [featured_sample("b"), featured_sample("c")])  # the rerun rebuilds it from scratch
    assert complete_shards(root) == [0]
    assert [r["key"] for r in iter_samples(root, columns=["key"])] == ["b", "c"]


def test_locally_no_file_has_its_final_name_before_it_is_complete(tmp_path):
    writer = ShardWriter(tmp_path, 0, feature_schema(8, 8), 0.8, STAGES)
    writer.add(featured_sample("a"))
    assert all(name.startswith(".") and name.endswith(".tmp") for name in os.listdir(tmp_path / "shards"))
    writer.close({"description": "test"})
    assert sorted(os.listdir(tmp_path / "shards")) == [
        "00000.parquet", "00000.tar", "00000_kept.parquet", "00000_rejects.parquet", "00000_stats.json"
    ]


# --- errors ---------------------------------------------------------------------------------------------------------


def _error(call) -> str:
    with pytest.raises(UserError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_an_unknown_protocol_is_one_line_before_any_work(tmp_path):
    write_photos(tmp_path / "photos", 1, size=32)
    out = tmp_path / "out"
    message = _error(lambda: prepare_build(["nosuch://bucket/photos"], str(out)))
    assert "nosuch://bucket/photos: unknown storage protocol 'nosuch'" in message and "s3://" in message
    assert not out.exists()
    message = _error(lambda: prepare_build([str(tmp_path / "photos")], "nosuch://bucket/data"))
    assert message.startswith("nosuch://bucket/data: unknown storage protocol")
    assert "nosuch://x: unknown storage protocol" in _error(lambda: open_dataset("nosuch://x"))


def test_a_missing_url_names_it(mem):
    assert _error(lambda: plan_inputs([f"{mem}/missing"], 10, EXT)) == (
        f"input {mem}/missing does not exist; pass an existing folder or .tar file"
    )
    assert f"{mem}/missing is not a λ-ECLIPSE dataset" in _error(lambda: open_dataset(f"{mem}/missing"))


def test_a_missing_backend_says_what_to_install(monkeypatch):
    monkeypatch.setitem(
        known_implementations, "fakefs",
        {"class": "fakefs_not_installed.FakeFileSystem", "err": "Install fakefs_not_installed to access fakefs"},
    )
    message = _error(lambda: plan_inputs(["fakefs://bucket/photos"], 10, EXT))
    assert message == (
        "fakefs://bucket/photos: the fakefs:// filesystem needs a package that is not installed; "
        "pip install fakefs_not_installed"
    )


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed")
def test_s3_without_s3fs_says_pip_install_s3fs(tmp_path):
    message = _error(lambda: prepare_build(["s3://bucket/photos"], str(tmp_path / "out")))
    assert message.endswith("pip install s3fs")
    assert _error(lambda: open_dataset("s3://bucket/data")).endswith("pip install s3fs")


def test_memory_inputs_and_outputs_are_refused_for_the_ray_workers(mem, tmp_path):
    MEMORY.pipe_file(f"{mem}/photos/a.jpg", _jpeg(0))
    message = _error(lambda: prepare_build([f"{mem}/photos"], str(tmp_path / "out")))
    assert message.startswith(f"input {mem}/photos is in this process's memory") and "file://" in message
    message = _error(lambda: prepare_build([str(tmp_path)], f"{mem}/dataset"))
    assert message.startswith(f"output {mem}/dataset is in this process's memory") and "write the shards" in message


# --- the prior reads from a URL -------------------------------------------------------------------------------------


def test_the_prior_reads_and_trains_on_a_dataset_at_a_url(tmp_path, mem, ray_local):
    local = write_dataset(tmp_path / "data", [(6, 2), (5, 2)])
    MEMORY.put(str(local), f"{mem}/data", recursive=True)
    here = open_dataset(local)
    for url in (f"{mem}/data", local.as_uri()):
        remote = open_dataset(url)
        assert remote.splits == here.splits and remote.zero_image == here.zero_image
        for a, b in zip(PriorBatches(remote, "val", 2), PriorBatches(here, "val", 2), strict=True):
            for name in a:
                torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    # Ray Train workers read the data and write the run directory themselves: both as file:// URLs here
    settings = ["data.loader_workers=0", "train.batch_size=4", "train.warmup_steps=1", "train.max_steps=2",
                "val.every=0"]
    run = tmp_path / "run"
    job = prepare_training(local.as_uri(), run.as_uri(), "tiny", load_train_config(None, settings), False)
    summary = run_training(job)
    assert summary["step"] == 2 and summary["final"] == str(run / "final") and (run / "final").is_dir()
    # memory:// lives in this process: the workers could not see it
    for data, output in ((f"{mem}/data", str(tmp_path / "b")), (str(local), f"{mem}/run")):
        with pytest.raises(UserError, match=r"memory://.* must be visible to every Ray worker"):
            prepare_training(data, output, "tiny", load_train_config(None, settings), False)


# --- the flow -------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_build_dataset_flow_with_url_inputs_and_outputs(tmp_path, prefect_harness, ray_local):
    """file:// in and out: Ray workers read the inputs and write the shards through fsspec URLs."""
    from flows.build_dataset import build_dataset

    photos = tmp_path / "photos"
    write_photos(photos, 4, size=128)
    out = tmp_path / "dataset"
    settings = ["resolution.min_side=96", "input.unit_size=2"]
    summary = build_dataset(inputs=[photos.as_uri()], output=out.as_uri(), profile="tiny", overrides=settings)
    assert summary["inputs"] == 4 and summary["shards"] == 2 and summary["accepted"] > 0
    assert complete_shards(out.as_uri()) == [0, 1]
    keys = [r["key"] for r in iter_samples(out.as_uri(), columns=["key"])]
    assert len(keys) == summary["accepted"]
    assert (out / "summary.md").read_text().startswith("# build-dataset summary")
    assert (out / "contact_sheet.png").stat().st_size > 0
    # file:// is the local filesystem: sources are recorded as plain paths, so a plain-path rerun continues it
    assert prepare_build([str(photos)], str(out), overrides=settings).todo == []


def test_transient_read_errors_are_tried_again_and_others_are_not(monkeypatch, tmp_path):
    """Throttling, 5xx answers and dropped connections get more tries with backoff; a missing file fails at once
    (the decode stage rejects it as deleted since planning)."""
    from storage import fs

    path = tmp_path / "photo.jpg"
    path.write_bytes(b"jpeg bytes")
    monkeypatch.setattr(fs, "READ_BACKOFF", 0.0)
    calls = []
    real = fs.LocalFileSystem.cat_file

    class SlowDown(Exception):
        response = {"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}

    failures = [ConnectionResetError("reset by peer"), SlowDown("slow down"), OSError(errno.EIO, "I/O error")]

    def flaky(self, *args, **kwargs):
        calls.append(args)
        if failures:
            raise failures.pop(0)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(fs.LocalFileSystem, "cat_file", flaky)
    assert fs.read_bytes(path) == b"jpeg bytes" and len(calls) == 4
    failures[:] = [ConnectionResetError("1"), ConnectionResetError("2"), ConnectionResetError("3"),
                   ConnectionResetError("4")]
    with pytest.raises(ConnectionResetError, match="4"):
        fs.read_bytes(path)  # READ_TRIES tries, then the unit fails (and is tried again as a unit)
    calls.clear()
    monkeypatch.setattr(fs.LocalFileSystem, "cat_file", real)
    with pytest.raises(FileNotFoundError):
        fs.read_bytes(tmp_path / "gone.jpg")
    assert not fs.transient(FileNotFoundError()) and not fs.transient(PermissionError())
    assert fs.transient(TimeoutError()) and not fs.transient(ValueError("bad"))
