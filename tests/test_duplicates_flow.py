"""The duplicates pass in a build: copies are rejected at `duplicates` naming the kept photo, before any model sees
them; the kept copy does not depend on how many units run at once; a growing dataset hashes only its new units."""

import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lambda_eclipse.synthetic import write_photos
from storage.layout import complete_shards, read_json, shard_paths
from storage.sources import sample_key
from tasks.copies import hashes_path

pytestmark = pytest.mark.slow
SETTINGS = ["resolution.min_side=96", "input.unit_size=2"]


def _rejects(root) -> dict[str, tuple[str, str]]:
    table = pa.concat_tables([pq.read_table(shard_paths(root, s)["rejects"]) for s in complete_shards(root)])
    return {r["key"]: (r["stage"], r["reason"]) for r in table.to_pylist()}


def _computed(root, stage: str) -> int:
    return sum(read_json(shard_paths(root, s)["stats"])["computed_by_stage"][stage] for s in complete_shards(root))


@pytest.fixture(scope="module")
def copies(tmp_path_factory, prefect_harness, ray_local):
    """Photos: 5 distinct ones, an exact copy of photo 0 and a resized, re-compressed copy of photo 1, spread over
    units of 2; built with 1 and with 3 units in flight."""
    from flows.build_dataset import build_dataset

    root = tmp_path_factory.mktemp("copies")
    photos = root / "photos"
    originals = write_photos(photos, 5, size=160)
    shutil.copy(originals[0], photos / "z_exact_copy.jpg")
    smaller = cv2.resize(np.array(Image.open(originals[1])), (120, 120), interpolation=cv2.INTER_AREA)
    Image.fromarray(smaller).save(photos / "a_resized_copy.jpg", quality=70)
    builds = {}
    for flight in (1, 3):
        out = root / f"in_flight_{flight}"
        build_dataset(inputs=[str(photos)], output=str(out), profile="tiny",
                      overrides=[*SETTINGS, f"runtime.units_in_flight={flight}"])
        builds[flight] = out
    return photos, builds


def _key(path) -> str:
    return sample_key(str(path))


def test_copies_are_rejected_naming_the_kept_photo(copies):
    photos, builds = copies
    rejects = {k: v for k, v in _rejects(builds[1]).items() if v[0] == "duplicates"}
    exact, kept_exact = _key(photos / "z_exact_copy.jpg"), _key(photos / "photo_00000.jpg")
    # an exact copy: as many pixels as its original, so the smaller key is kept
    first, second = sorted([exact, kept_exact])
    assert rejects[second] == ("duplicates", f"copy of {first} (exact copy)")
    resized = _key(photos / "a_resized_copy.jpg")
    stage, reason = rejects[resized]
    assert reason.startswith(f"copy of {_key(photos / 'photo_00001.jpg')} (pHash ")  # the larger photo is kept
    assert len(rejects) == 2  # the other photos are distinct


def test_no_model_sees_a_copy(copies):
    _, builds = copies
    stats = [read_json(shard_paths(builds[1], s)["stats"]) for s in complete_shards(builds[1])]
    inputs = sum(s["inputs"] for s in stats)
    assert inputs == 7 and _computed(builds[1], "caption") == inputs - 2


def test_the_kept_copy_does_not_depend_on_units_in_flight(copies):
    _, builds = copies
    assert _rejects(builds[1]) == _rejects(builds[3])


def test_growth_hashes_only_new_units_and_checks_them_against_the_old(copies, tmp_path):
    from flows.build_dataset import build_dataset

    grown, out = tmp_path / "photos", tmp_path / "out"
    write_photos(grown, 4, size=160)
    build_dataset(inputs=[str(grown)], output=str(out), profile="tiny", overrides=SETTINGS)
    before = {s: Path(hashes_path(out, s)).stat().st_mtime_ns for s in complete_shards(out)}
    shutil.copy(grown / "photo_00002.jpg", grown / "zz_new_copy.jpg")  # a new unit: a copy of a built photo
    write_photos(grown, 1, size=160, start=50)  # and a new distinct photo
    build_dataset(inputs=[str(grown)], output=str(out), profile="tiny", overrides=SETTINGS)
    assert {s: Path(hashes_path(out, s)).stat().st_mtime_ns for s in before} == before  # old units not hashed again
    rejects = _rejects(out)
    assert rejects[_key(grown / "zz_new_copy.jpg")] == ("duplicates", f"copy of {_key(grown / 'photo_00002.jpg')} "
                                                                      "(exact copy)")
    assert _key(grown / "photo_00050.jpg") not in rejects


def test_a_refilter_keeps_the_duplicate_decisions(copies, tmp_path):
    from flows.build_dataset import build_dataset

    photos, builds = copies
    out = tmp_path / "refiltered"
    build_dataset(inputs=[str(photos)], output=str(out), profile="tiny", overrides=[*SETTINGS, "boxes.min_logit=0.5"],
                  reuse=str(builds[1]))
    def copies_of(root):
        return {k: v for k, v in _rejects(root).items() if v[0] == "duplicates"}

    assert copies_of(out) == copies_of(builds[1]) and len(copies_of(out)) == 2
    assert _computed(out, "caption") == 0  # every kept photo's caption came from the earlier build
