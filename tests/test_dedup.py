"""lambda-eclipse dedup (tasks/semantic_dedup.py): SemDeDup marks beside the shards, and the marks it writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from flows.cli import main
from storage.layout import shard_paths, write_json_atomic
from storage.marks import DUPLICATES, mark_sets, marks_path
from storage.schema import feature_schema
from storage.shard_writer import ShardWriter
from storage.synthetic_features import featured_sample
from tasks import semantic_dedup as sd

D = 32


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


def near(v: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector whose cosine with the unit vector `v` is exactly `cosine`."""
    r = rng.normal(size=v.shape)
    r -= (r @ v) * v
    return unit(cosine * v + np.sqrt(1 - cosine**2) * unit(r))


def planted(seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """60 photos' embeddings: 44 unrelated, and groups of near-duplicates; returns (key → embedding, the expected
    marks: duplicate → kept key), keys in one order."""
    rng = np.random.default_rng(seed)
    vectors = {f"u{i:02d}": unit(rng.normal(size=D)) for i in range(44)}
    a = unit(rng.normal(size=D))
    vectors |= {"a0": a, "a1": a.copy(), "a2": a.copy()}  # exact copies: the smallest key is kept (ties by key)
    b = unit(rng.normal(size=D))
    vectors |= {"b0": b, "b1": near(b, 0.99, rng)}  # 0.99: a duplicate at 0.95, not at 0.995
    c = unit(rng.normal(size=D))
    vectors |= {"c0": c, "c1": near(c, 0.97, rng), "c2": near(c, 0.97, rng)}
    e = unit(rng.normal(size=D))
    vectors |= {"e0": e, "e1": near(e, 0.90, rng)}  # below 0.95: both kept
    for i in range(6):
        vectors[f"z{i}"] = unit(rng.normal(size=D))
    return vectors, {"a1": "a0", "a2": "a0"}


def write_dataset(root: Path, vectors: dict[str, np.ndarray], shards: list[list[str]]) -> Path:
    """A feature dataset whose photos' embeddings are `vectors`, the keys dealt to shards as `shards` lists."""
    root.mkdir(parents=True, exist_ok=True)
    meta = {"embed_dim": D, "text_width": D, "profile": "tiny", "zero_image_embedding": [0.0] * D}
    write_json_atomic(root / "dataset.json", meta)
    for shard, keys in enumerate(shards):
        writer = ShardWriter(root, shard, feature_schema(D, D), 0.8, ["decode"])
        for key in keys:
            sample = featured_sample(key, D, D)
            sample.features["target_embedding"] = vectors[key]
            writer.add(sample)
        writer.close({"description": "planted duplicates"})
    return root


def marks_of(root: Path) -> dict[str, tuple[str, float, int]]:
    """key → (match, score, shard) of the dataset's duplicate marks, read from the files."""
    summary = mark_sets(root)[DUPLICATES]
    out = {}
    for shard in summary["shards"]:
        for row in pq.read_table(marks_path(root, DUPLICATES, shard)).to_pylist():
            assert row["kind"] == "duplicate" and row["detail"] == "photo"
            out[row["key"]] = (row["match"], row["score"], shard)
    return out


def test_greedy_keeps_in_order_and_matches_kept_ones():
    rng = np.random.default_rng(1)
    a = unit(rng.normal(size=D))
    b = near(a, 0.96, rng)  # near a
    u = unit(rng.normal(size=D))
    x = np.stack([a, b, u, a, near(u, 0.999, rng)])
    match, score = sd.greedy_duplicates(x, 0.95)
    assert match.tolist() == [-1, 0, -1, 0, 2]
    assert score[1] == pytest.approx(0.96, abs=1e-5) and score[3] == pytest.approx(1.0, abs=1e-5)
    assert score[0] == 0 and score[2] == 0


def test_greedy_chain_keeps_the_far_end():
    # a ~ b (0.96), b ~ c (0.96), a · c ≈ 0.84 < 0.95: b is a duplicate of a, c is kept (it matches no kept sample)
    a = np.zeros(D, np.float32)
    a[0] = 1
    angle = np.arccos(0.96)
    b, c = np.zeros(D, np.float32), np.zeros(D, np.float32)
    b[:2] = np.cos(angle), np.sin(angle)
    c[:2] = np.cos(2 * angle), np.sin(2 * angle)
    match, _ = sd.greedy_duplicates(np.stack([a, b, c]), 0.95)
    assert match.tolist() == [-1, 0, -1]


def test_greedy_across_blocks(monkeypatch):
    monkeypatch.setattr(sd, "BLOCK", 3)
    monkeypatch.setattr(sd, "KEPT_BLOCK", 2)
    rng = np.random.default_rng(2)
    base = unit(rng.normal(size=(5, D)))
    x = np.concatenate([base, base[::-1], base[:2]])  # every row after the 5th repeats one of them
    match, score = sd.greedy_duplicates(x, 0.95)
    assert match.tolist() == [-1] * 5 + [4, 3, 2, 1, 0, 0, 1]
    assert np.allclose(score[5:], 1, atol=1e-5)


def test_big_clusters_are_split(monkeypatch):
    monkeypatch.setattr(sd, "MAX_CLUSTER", 50)
    rng = np.random.default_rng(3)
    x = unit(rng.normal(size=(200, D)))
    keys = np.array([f"k{i:03d}" for i in range(200)])
    model = sd.train_centroids(2, 0, 1000, {"keys": keys, "vectors": x})
    # 2 clusters of ~100 sampled rows stand for ~500 each: split into ≥ 10 pieces of at most ~50 expected rows
    assert len(model["centroids"]) >= 10
    assert model["partitions"] == 1 and set(model["partition"].tolist()) == {0}
    assert np.allclose(np.linalg.norm(model["centroids"], axis=1), 1, atol=1e-5)


def test_chunks():
    assert sd.chunks([0, 1, 2, 3], [3, 3, 5, 1], size=6) == [[0, 1], [2, 3]]
    assert sd.chunks([0, 1], [9, 1], size=6) == [[0], [1]]
    assert sd.default_clusters(1) == 1 and sd.default_clusters(10_000) == 100


def test_dedup_marks_the_planted_duplicates(tmp_path, ray_local):
    vectors, exact = planted()
    keys = sorted(vectors)
    root = write_dataset(tmp_path / "data", vectors, [keys[0::3], keys[1::3], keys[2::3]])
    result = sd.semantic_dedup(root, 0.95, clusters=4, seed=0, log=lambda _: None)
    marks = marks_of(root)
    kept_b = {"b0", "b1"} - set(marks)
    kept_c = {"c0", "c1", "c2"} - set(marks)
    # one of each group kept, the others marked as duplicates of it; nothing else marked
    assert set(marks) - {"b0", "b1", "c0", "c1", "c2"} == set(exact)
    assert len(kept_b) == 1 and len(kept_c) == 1
    assert {k: m for k, (m, _, _) in marks.items() if k in exact} == exact
    assert all(marks[k][0] in kept_b for k in {"b0", "b1"} - kept_b)
    assert all(marks[k][0] in kept_c for k in {"c0", "c1", "c2"} - kept_c)
    assert result.marked == len(marks) == 5 and result.samples == 60
    for key, (match, score, shard) in marks.items():
        assert float(vectors[key] @ vectors[match]) == pytest.approx(score, abs=1e-5) and score >= 0.95
        assert key in pq.read_table(shard_paths(root, shard)["parquet"], columns=["key"])["key"].to_pylist()
    summary = json.loads(Path(marks_path(root, DUPLICATES)).read_text())
    assert summary["marked"] == 5 and summary["threshold"] == 0.95 and summary["samples"] == 60

    # the same marks on a second run, and with the samples dealt to shards in another arrangement
    again = sd.semantic_dedup(root, 0.95, clusters=4, seed=0, log=lambda _: None)
    assert again.marks == result.marks
    other = write_dataset(tmp_path / "other", vectors, [keys[::-1][:25], keys[::-1][25:]])
    sd.semantic_dedup(other, 0.95, clusters=4, seed=0, log=lambda _: None)
    assert {k: m for k, (m, _, _) in marks_of(other).items()} == {k: m for k, (m, _, _) in marks.items()}

    # a higher threshold marks only the pairs above it: the exact copies and c's 0.97 pairs at 0.96, not b's 0.99 at
    # 0.995; the set is replaced, not added to
    sd.semantic_dedup(root, 0.995, clusters=4, seed=0, log=lambda _: None)
    assert {k: m for k, (m, _, _) in marks_of(root).items()} == exact
    sd.semantic_dedup(root, 0.85, clusters=4, seed=0, log=lambda _: None)
    assert set(marks_of(root)) >= set(marks) and len({"e0", "e1"} & set(marks_of(root))) == 1


def test_command(tmp_path, ray_local, capsys):
    vectors, exact = planted()
    keys = sorted(vectors)
    root = write_dataset(tmp_path / "data", vectors, [keys[:30], keys[30:]])
    assert main(["dedup", str(root), "--threshold", "0.995", "--clusters", "3", "--seed", "7"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith(f"{len(exact)} of 60 samples marked as semantic duplicates")
    assert any("k-means" in line for line in out[:-1])
    assert mark_sets(root)[DUPLICATES]["seed"] == 7


@pytest.mark.parametrize(("args", "error"), [
    (["--threshold", "1.5"], "--threshold 1.5: the cosine threshold must be in (0, 1]"),
    (["--threshold", "0"], "--threshold 0.0: the cosine threshold must be in (0, 1]"),
    (["--clusters", "0"], "--clusters 0: must be ≥ 1"),
])
def test_command_errors(tmp_path, capsys, args, error):
    vectors, _ = planted()
    root = write_dataset(tmp_path / "data", vectors, [sorted(vectors)])
    assert main(["dedup", str(root), *args]) == 2
    assert capsys.readouterr().err.strip() == f"lambda-eclipse dedup: error: {error}"
    assert not (root / "marks").exists()


def test_command_refuses_what_is_not_a_dataset(tmp_path, capsys):
    assert main(["dedup", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"lambda-eclipse dedup: error: {tmp_path / 'nothing'} is not a λ-ECLIPSE dataset")
    empty = tmp_path / "empty"
    empty.mkdir()
    write_json_atomic(empty / "dataset.json", {"embed_dim": D})
    assert main(["dedup", str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no complete shards" in err and len(err.splitlines()) == 1


def test_help_explains_itself(capsys):
    with pytest.raises(SystemExit):
        main(["dedup", "--help"])
    text = capsys.readouterr().out
    for word in ("--threshold", "0.95", "--clusters", "--seed", "semantic_duplicates", "skip_duplicates"):
        assert word in text
