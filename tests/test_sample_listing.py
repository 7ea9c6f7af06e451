"""`build-dataset --sample`: a deterministic, stratified sample of a listing (storage/sources.py `sample_listing`), tar
units that keep a fraction of their members, and the manifest's `fraction` column."""

import hashlib
import io
import math
import random
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lambda_eclipse.errors import UserError
from storage.manifest import read_manifest, write_manifest
from storage.shard_writer import split_of
from storage.sources import Listing, WorkUnit, list_inputs, plan_units, sample_listing

EXT = (".jpg",)


def _folder_listing(counts: dict[str, int], root: str = "/in") -> Listing:
    files = sorted((f"{d}/{i:04d}.jpg", 1000) for d, n in counts.items() for i in range(n))
    return Listing(folders=[(root, files)])


def _by_dir(sampled: Listing) -> dict[str, int]:
    found: dict[str, int] = {}
    for _, files in sampled.folders:
        for relative, _ in files:
            found[relative.rpartition("/")[0]] = found.get(relative.rpartition("/")[0], 0) + 1
    return found


def _smallest_hashes(names: list[str], k: int) -> list[str]:
    return sorted(names, key=lambda n: hashlib.sha256(n.encode()).hexdigest())[:k]


def _tar(path, members: int, size: int = 10_000) -> None:
    with tarfile.open(path, "w") as tar:
        for i in range(members):
            for ext, data in ((".jpg", bytes([i % 251]) * size), (".txt", b"a caption")):
                info = tarfile.TarInfo(f"{i:06d}{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_directory_quotas_are_proportional_and_sum_exactly():
    sampled = sample_listing(_folder_listing({"a": 60, "b": 30, "c": 10}), 10)
    assert _by_dir(sampled.listing) == {"a": 6, "b": 3, "c": 1}
    # 2.5, 1.5, 1.0 of 5: floors 2, 1, 1 and the one left goes to the largest remainder (a tie: the first directory)
    sampled = sample_listing(_folder_listing({"a": 5, "b": 3, "c": 2}), 5)
    assert _by_dir(sampled.listing) == {"a": 3, "b": 1, "c": 1}


def test_a_count_of_folder_images_is_exact_and_takes_the_smallest_hashes_in_each_directory():
    listing = _folder_listing({"x": 100, "y/z": 100, "w": 100})
    sampled = sample_listing(listing, 37)
    (root, files), = sampled.listing.folders
    assert root == "/in" and len(files) == 37
    assert (sampled.images, sampled.sample_images, sampled.fraction, sampled.estimated) == (300, 37, 1.0, False)
    assert files == sorted(files)  # in the listing's order
    names = [f for f, _ in files]
    quotas = _by_dir(sampled.listing)
    assert sorted(quotas.values()) == [12, 12, 13]
    for directory, quota in quotas.items():
        in_dir = [f for f, _ in listing.folders[0][1] if f.rpartition("/")[0] == directory]
        assert [n for n in names if n.rpartition("/")[0] == directory] == sorted(_smallest_hashes(in_dir, quota))


def test_a_fraction_of_folder_images_and_a_count_above_the_listing():
    listing = _folder_listing({"a": 150, "b": 150})
    assert sample_listing(listing, 0.1).sample_images == 30
    assert _by_dir(sample_listing(listing, 0.1).listing) == {"a": 15, "b": 15}
    everything = sample_listing(listing, 1000)
    assert everything.listing.folders == listing.folders and everything.sample_images == 300


def test_the_sample_does_not_depend_on_the_listing_order():
    listing = _folder_listing({"a": 40, "b": 25, "c": 7})
    shuffled = Listing(folders=[("/in", random.Random(3).sample(listing.folders[0][1], 72))])
    chosen = {f for f, _ in sample_listing(listing, 0.25).listing.folders[0][1]}
    assert chosen == {f for f, _ in sample_listing(shuffled, 0.25).listing.folders[0][1]}
    assert chosen == {f for f, _ in sample_listing(listing, 0.25).listing.folders[0][1]}
    assert len(chosen) == 18  # round(0.25 · 72)


def test_each_input_root_is_stratified_on_its_own():
    listing = Listing(folders=[("/one", [(f"d/{i}.jpg", 1) for i in range(30)]),
                               ("/two", [(f"d/{i}.jpg", 1) for i in range(10)])])
    sampled = sample_listing(listing, 8)
    assert [len(files) for _, files in sampled.listing.folders] == [6, 2]


def _tars(count: int, per_folder: int, size: int = 50_000) -> Listing:
    tars = [(f"/in/{i // per_folder:03d}/{i:06d}.tar", size) for i in range(count)]
    return Listing(tars=[("/in", tars)], folders=[("/in", [("photo.jpg", 1000)])])  # one photo: the mean image size


@pytest.mark.parametrize("count, p, k, fraction", [
    (100_000, 0.01, 1000, 1.0),  # a 1 % sample of 100,000 tars reads 1,000 whole tars
    (20, 0.1, 16, 0.125),  # a small corpus still spreads over 16 tars, of which an eighth of the members
    (10, 0.5, 10, 0.5),  # fewer than 16 tars: all of them, half of each
    (100, 0.5, 50, 1.0),
])
def test_tars_are_chosen_by_the_k_rule_and_keep_a_fraction_of_their_members(count, p, k, fraction):
    sampled = sample_listing(_tars(count, 1000 if count > 1000 else 5), p)
    (item, picked), = sampled.listing.tars
    assert item == "/in" and len(picked) == k
    assert sampled.fraction == pytest.approx(fraction)
    assert k == min(count, max(math.ceil(p * count), min(count, 16)))


def test_tars_are_spread_over_their_folders():
    sampled = sample_listing(_tars(100_000, 1000), 0.01)
    folders: dict[str, int] = {}
    for tar, _ in sampled.listing.tars[0][1]:
        folders[tar.rsplit("/", 2)[1]] = folders.get(tar.rsplit("/", 2)[1], 0) + 1
    assert len(folders) == 100 and set(folders.values()) == {10}
    assert sampled.listing.tars == sample_listing(_tars(100_000, 1000), 0.01).listing.tars


def test_tar_images_are_estimated_from_the_mean_folder_image():
    sampled = sample_listing(_tars(100, 10, size=50_000), 0.5)  # folder images of 1,000 bytes: 50 per tar
    assert sampled.estimated and sampled.images == 1 + 100 * 50
    assert sampled.sample_images == 1 + 2500


def test_a_count_of_tar_images_is_estimated_from_the_first_tars_headers(tmp_path):
    for i in range(4):
        _tar(tmp_path / f"{i:05d}.tar", 20)
    listing = list_inputs([str(tmp_path)], EXT)
    sampled = sample_listing(listing, 20)
    assert sampled.estimated and 80 <= sampled.images <= 88  # 80 images; a small tar's end padding counts a little
    # all 4 tars (fewer than 16), p = 20 / images of each one's members
    assert len(sampled.listing.tars[0][1]) == 4 and sampled.fraction == pytest.approx(20 / sampled.images)
    assert 18 <= sampled.sample_images <= 22


def test_an_unreadable_first_tar_is_a_user_error(tmp_path):
    (tmp_path / "00000.tar").write_bytes(b"not a tar" * 100)
    with pytest.raises(UserError, match=r"--sample.*00000\.tar"):
        sample_listing(list_inputs([str(tmp_path)], EXT), 10)


@pytest.mark.parametrize("n", [0, -1, 2.5, float("nan"), float("inf")])
def test_a_sample_that_is_neither_a_fraction_nor_a_whole_count_is_refused(n):
    with pytest.raises(UserError, match="--sample") as caught:
        sample_listing(_folder_listing({"a": 5}), n)
    assert "\n" not in str(caught.value)


def test_a_tar_unit_keeps_about_its_fraction_of_members_the_same_ones_every_time(tmp_path):
    _tar(tmp_path / "00000.tar", 400, size=10)
    unit = WorkUnit(0, "tar", str(tmp_path / "00000.tar"), [("", 1)])
    everything = [s.key for s in unit.iter_samples(EXT)]
    unit.fraction = 0.5
    half = [s.key for s in unit.iter_samples(EXT)]
    assert len(everything) == 400 and 170 <= len(half) <= 230
    assert half == [s.key for s in unit.iter_samples(EXT)] and set(half) < set(everything)
    # the choice is not the split's hash: the kept samples hold train and val in the split's proportions
    assert 0.1 <= sum(split_of(k, 0.8) == "val" for k in half) / len(half) <= 0.3


def test_the_fingerprint_is_unchanged_for_whole_units_and_names_a_fraction():
    tar = WorkUnit(0, "tar", "/in/a.tar", [("", 123)])
    folder = WorkUnit(3, "folder", "/in", [("a/1.jpg", 10), ("b.jpg", 20)], 5)
    assert (tar.fingerprint(), folder.fingerprint()) == ("6c92de3be8e8fc83", "0f76a651f3a24ba6")  # before sampling
    sampled = WorkUnit(0, "tar", "/in/a.tar", [("", 123)], fraction=0.5)
    assert sampled.fingerprint() != tar.fingerprint()
    assert sampled.description == "tar /in/a.tar (sample: 0.5 of its members)" and tar.description == "tar /in/a.tar"


def test_the_manifest_keeps_the_fraction_and_reads_old_manifests_as_whole(tmp_path):
    units = [WorkUnit(0, "tar", "/in/a.tar", [("", 123)], fraction=0.25), WorkUnit(1, "folder", "/in", [("x.jpg", 5)])]
    write_manifest(tmp_path, units)
    assert [(u.fraction, u.fingerprint()) for u in read_manifest(tmp_path) or []] == [
        (0.25, units[0].fingerprint()), (1.0, units[1].fingerprint())]
    old = pa.schema([("shard", pa.int64()), ("kind", pa.string()), ("root", pa.string()),
                     ("files", pa.list_(pa.string())), ("sizes", pa.list_(pa.int64())), ("start", pa.int64()),
                     ("fingerprint", pa.string())])
    pq.write_table(pa.Table.from_pylist([{"shard": 0, "kind": "tar", "root": "/in/a.tar", "files": [""],
                                          "sizes": [123], "start": 0, "fingerprint": "6c92de3be8e8fc83"}],
                                        schema=old), tmp_path / "manifest.parquet")
    (unit,) = read_manifest(tmp_path) or []
    assert unit.fraction == 1.0 and unit.fingerprint() == "6c92de3be8e8fc83"


def test_plan_units_gives_new_tars_the_fraction_and_keeps_previous_ones(tmp_path):
    for i in range(3):
        _tar(tmp_path / f"{i:05d}.tar", 2, size=10)
    listing = list_inputs([str(tmp_path)], EXT)
    first = plan_units(Listing(tars=[(listing.tars[0][0], listing.tars[0][1][:2])]), 10, tar_fraction=0.3).units
    assert [u.fraction for u in first] == [0.3, 0.3]
    again = plan_units(listing, 10, previous=first).units
    assert [u.fraction for u in again] == [0.3, 0.3, 1.0] and [u.shard for u in again] == [0, 1, 2]


def test_a_sampled_folder_plans_into_units_of_its_sampled_files(tmp_path):
    for directory, n in (("a", 9), ("b", 3)):
        (tmp_path / directory).mkdir()
        for i in range(n):
            (tmp_path / directory / f"{i}.jpg").write_bytes(b"x")
    sampled = sample_listing(list_inputs([str(tmp_path)], EXT), 4)
    units = plan_units(sampled.listing, 2, tar_fraction=sampled.fraction).units
    assert [len(u.files) for u in units] == [2, 2]
    assert sorted(f.split("/")[0] for u in units for f, _ in u.files) == ["a", "a", "a", "b"]
