"""The duplicates pass without Ray: pHashes of copies, grouping by banded hashes against brute force, the keep rule,
the stage, and the config hash of datasets built before the pass."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from lambda_eclipse.synthetic import photo
from storage.sample import Sample, SourceRef
from tasks.config import load_build_config
from tasks.copies import group_copies
from tasks.duplicates import Duplicates
from tasks.phash import hamming, hamming_many, phash


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return np.array(Image.open(buf))


@pytest.fixture(scope="module")
def original() -> np.ndarray:
    return np.array(photo(7, 640, 480))


@pytest.mark.parametrize("copy", [
    lambda a: cv2.resize(a, (a.shape[1] // 2, a.shape[0] // 2), interpolation=cv2.INTER_AREA),
    lambda a: cv2.resize(a, (int(a.shape[1] * 0.7), int(a.shape[0] * 0.7)), interpolation=cv2.INTER_AREA),
    lambda a: _jpeg(a, 60),
    lambda a: _jpeg(cv2.resize(a, (448, 336), interpolation=cv2.INTER_AREA), 75),
    lambda a: a[:, ::-1],  # a horizontal flip
], ids=["resized 50%", "resized 70%", "jpeg q60", "resized and re-compressed", "flipped"])
def test_copies_of_a_photo_hash_within_the_default_distance(original, copy):
    assert hamming(phash(original), phash(np.ascontiguousarray(copy(original)))) <= \
        load_build_config().duplicates.max_distance


def test_different_photos_hash_far_apart():
    hashes = [phash(np.array(photo(i, 256, 256))) for i in range(20)]
    distances = [hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1:]]
    assert min(distances) > 2 * load_build_config().duplicates.max_distance, min(distances)


def test_hamming_many_matches_hamming():
    rng = np.random.default_rng(1)
    many = rng.integers(0, 2**63, 50, dtype=np.uint64)
    assert hamming_many(int(many[0]), many).tolist() == [hamming(int(many[0]), int(x)) for x in many]


def _brute_pairs(hashes: np.ndarray, t: int) -> set[tuple[int, int]]:
    return {(i, j) for i in range(len(hashes)) for j in range(i + 1, len(hashes))
            if hamming(int(hashes[i]), int(hashes[j])) <= t}


@pytest.mark.parametrize("t", [0, 1, 3, 6])
def test_banding_finds_every_pair_within_the_distance_that_all_pairs_would(t):
    rng = np.random.default_rng(t)
    base = rng.integers(0, 2**63, 300, dtype=np.uint64)
    planted = []
    for i in range(60):  # copies at every distance up to t + 2, one bit flipped at a random place per step
        h = int(base[i])
        for bit in rng.choice(63, size=i % (t + 3), replace=False):
            h ^= 1 << int(bit)
        planted.append(h)
    hashes = np.concatenate([base, np.array(planted, np.uint64)])
    n = len(hashes)
    keys = np.array([f"k{i:04d}" for i in range(n)], object)
    table = group_copies(keys, np.zeros(n, np.int64), hashes, keys, np.ones(n, np.int64), np.zeros(n, bool), t)
    marked = set(table["key"].to_pylist())
    # every photo with a partner within t is in a group of copies: all but one of each group is marked
    pairs = _brute_pairs(hashes, t)
    grouped = {i for pair in pairs for i in pair}
    assert len(marked) == len(grouped) - _components(pairs)
    assert marked <= {f"k{i:04d}" for i in grouped}


def _components(pairs: set[tuple[int, int]]) -> int:
    parent: dict[int, int] = {}

    def find(i: int) -> int:
        while parent.setdefault(i, i) != i:
            i = parent[i]
        return i

    for a, b in pairs:
        parent[find(a)] = find(b)
    return len({find(i) for pair in pairs for i in pair})


def test_the_kept_copy_is_built_then_largest_then_smallest_key():
    h = np.array([5, 5, 5 ^ 1, 5, 999_999], np.uint64)  # four copies, one distinct
    keys = np.array(["d", "c", "b", "a", "z"], object)
    contents = np.array(["x", "x", "y", "w", "q"], object)
    pixels = np.array([100, 100, 50, 10, 100])
    table = group_copies(keys, np.arange(5), h, contents, pixels, np.zeros(5, bool), 3)
    rows = {r["key"]: r for r in table.to_pylist()}
    assert set(rows) == {"d", "b", "a"} and {r["copy_of"] for r in rows.values()} == {"c"}  # a 100 px tie: key
    assert rows["d"]["exact"] and rows["d"]["distance"] == 0
    assert not rows["b"]["exact"] and rows["b"]["distance"] == 1
    built = np.array([False, False, False, True, False])  # in a shard built earlier: kept, though the smallest
    table = group_copies(keys, np.arange(5), h, contents, pixels, built, 3)
    assert {r["copy_of"] for r in table.to_pylist()} == {"a"} and "a" not in table["key"].to_pylist()
    # the same inputs in another order: the same decisions
    order = np.array([4, 2, 0, 3, 1])
    again = group_copies(keys[order], np.arange(5)[order], h[order], contents[order], pixels[order], built[order], 3)
    assert sorted(again.to_pylist(), key=lambda r: r["key"]) == sorted(table.to_pylist(), key=lambda r: r["key"])


def test_the_stage_rejects_a_copy_naming_the_kept_one():
    copy = Sample(key="b", source="b.jpg", ref=SourceRef("b.jpg"), copy_of="a (exact copy)")
    kept = Sample(key="a", source="a.jpg", ref=SourceRef("a.jpg"))
    Duplicates.from_config(load_build_config())([copy, kept])
    assert copy.reject is not None
    assert (copy.reject.stage, copy.reject.reason) == ("duplicates", "copy of a (exact copy)")
    assert kept.accepted


def test_the_new_section_at_its_defaults_keeps_earlier_datasets_config_hash():
    # the hashes of the default config, and of the tests' usual one, before the duplicates section existed
    assert load_build_config().content_hash() == "d14b838ae832c325"
    assert load_build_config(overrides=["resolution.min_side=96"]).content_hash() == "7255b6a2f7e25013"
    assert load_build_config(overrides=["duplicates.max_distance=5"]).content_hash() != "d14b838ae832c325"
