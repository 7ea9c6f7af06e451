"""`lambda-eclipse decontaminate DIR --against BENCH_DIR` (evaluation/leaks.py, flows/decontaminate.py): training
samples whose photo or subject crop matches a benchmark image are marked in the `leaks` mark set, with a report; a
dataset built from photos that include copies of benchmark photos has exactly those marked."""

import io
import json
import shutil
import tarfile

import pytest
from PIL import Image, ImageOps

from flows.cli import main
from lambda_eclipse.synthetic import write_photos
from storage.marks import LEAKS, mark_sets, shard_marks
from storage.synthetic_features import keys_for, write_feature_dataset

BUILD = ["resolution.min_side=96"]  # conftest's BUILD_SETTINGS' resolution: 128 px photos pass


def _marks(data) -> list[dict]:
    sets = mark_sets(data)
    shards = sets[LEAKS]["shards"]
    return sorted((r for s in shards for r in shard_marks(data, s, {LEAKS: sets[LEAKS]}).to_pylist()),
                  key=lambda r: r["key"])


def _tar_member(data, shard: int, name: str) -> bytes:
    with tarfile.open(data / "shards" / f"{shard:05d}.tar") as tar:
        member = tar.extractfile(name)
        assert member is not None
        return member.read()


# -- the library on feature shards (no build) -------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_a_copied_photo_and_a_copied_subject_crop_are_found_and_a_changed_shard_is_unchecked(tmp_path):
    from evaluation.leaks import Thresholds, current_check, find_leaks

    data = write_feature_dataset(tmp_path / "dataset", [(6, 2), (5, 2)])
    photo_key, crop_key = keys_for("train", 6, "s1")[2], keys_for("train", 6, "s0")[4]
    bench = tmp_path / "bench"
    write_photos(bench / "dog", 2, size=64)
    (bench / "cat").mkdir()
    (bench / "cat" / "copy.jpg").write_bytes(_tar_member(data, 1, f"{photo_key}.jpg"))
    (bench / "cat" / "crop.png").write_bytes(_tar_member(data, 0, f"{crop_key}.subj1.png"))
    lines = []
    result = find_leaks(str(data), str(bench), Thresholds(shards_per_task=1), log=lines.append)
    assert result.samples == 15 and result.shards == 2
    assert [(m.key, m.detail, result.index.paths[m.bench]) for m in result.matches] == [
        (crop_key, "subject crop 1", "cat/crop.png"), (photo_key, "photo", "cat/copy.jpg")]
    assert lines[0] == f"benchmark {bench}: 4 images in 2 subjects; embeddings: open_clip tiny (random weights)"
    assert result.line().startswith(f"2 training samples match the benchmark {bench} (cat 2): marked in ")
    rows = _marks(data)
    assert [(r["key"], r["kind"], r["match"], r["detail"], r["score"]) for r in rows] == [
        (crop_key, "leak", "cat/crop.png", "subject crop 1", 1.0), (photo_key, "leak", "cat/copy.jpg", "photo", 1.0)]
    summary = mark_sets(data)[LEAKS]
    assert summary["per_subject"] == {"cat": 2, "dog": 0} and summary["marked"] == 2 and summary["shards"] == [0, 1]
    assert summary["thresholds"] == {"max_distance": 8, "min_similarity": 0.999}  # tiny's default
    assert summary["benchmark"] == str(bench) and set(summary["checked_shards"]) == {"00000", "00001"}
    assert current_check(str(data), str(bench)) == summary
    assert current_check(str(data), str(tmp_path)) is None  # another benchmark
    assert current_check(str(data), str(bench), Thresholds(max_distance=4)) is None  # other thresholds
    stats = data / "shards" / "00001_stats.json"  # shard 1 rebuilt since: its Parquet is another
    record = json.loads(stats.read_text())
    record["files"]["00001.parquet"]["sha256"] = "0" * 64
    stats.write_text(json.dumps(record))
    assert current_check(str(data), str(bench)) is None


def test_a_missing_benchmark_folder_or_dataset_is_a_one_line_error(tmp_path, capsys):
    assert main(["decontaminate", str(tmp_path), "--against", str(tmp_path)]) == 2
    assert "is not a λ-ECLIPSE dataset (no dataset.json)" in capsys.readouterr().err
    (tmp_path / "dataset.json").write_text("{}")
    assert main(["decontaminate", str(tmp_path), "--against", str(tmp_path / "nope")]) == 2
    assert "--against" in capsys.readouterr().err


# -- the command on a flow-built dataset ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def leaky(tmp_path_factory, prefect_harness, ray_local):
    """A dataset built by the flow from 5 photos: 3 copies of benchmark photos (one as it is, one resized and
    re-compressed, one mirrored) and 2 other photos; the benchmark has 2 subjects of 2 photos."""
    from flows.build_dataset import build_dataset

    root = tmp_path_factory.mktemp("leaky")
    bench, photos = root / "bench", root / "photos"
    write_photos(bench / "dog", 2, size=128, start=100)
    write_photos(bench / "cat", 2, size=128, start=102)
    write_photos(photos, 2, size=128)
    shutil.copy(bench / "dog" / "photo_00100.jpg", photos / "copy_dog_0.jpg")
    Image.open(bench / "dog" / "photo_00101.jpg").resize((112, 112)).save(photos / "copy_dog_1.jpg", quality=75)
    ImageOps.mirror(Image.open(bench / "cat" / "photo_00102.jpg")).save(photos / "copy_cat_0.png")
    data = root / "dataset"
    summary = build_dataset(inputs=[str(photos)], output=str(data), profile="tiny", overrides=BUILD)
    assert summary["accepted"] == 5, summary
    import pyarrow.parquet as pq

    sources = pq.read_table(data / "shards" / "00000.parquet", columns=["key", "source"]).to_pylist()
    keys = {r["source"].rsplit("/", 1)[-1]: r["key"] for r in sources}
    return {"root": root, "bench": bench, "data": data, "keys": keys}


@pytest.mark.slow
def test_decontaminate_marks_the_copies_of_benchmark_photos(leaky, capsys):
    data, bench, keys = leaky["data"], leaky["bench"], leaky["keys"]
    assert main(["decontaminate", str(data), "--against", str(bench)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"3 training samples match the benchmark {bench} (cat 1, dog 2): marked in ")
    assert last.endswith(f"report at {data / 'marks' / 'leaks' / 'report.md'}")
    copies = {"copy_dog_0.jpg": "dog/photo_00100.jpg", "copy_dog_1.jpg": "dog/photo_00101.jpg",
              "copy_cat_0.png": "cat/photo_00102.jpg"}
    rows = _marks(data)
    assert {r["key"]: r["match"] for r in rows} == {keys[name]: match for name, match in copies.items()}
    assert {r["detail"] for r in rows} == {"photo"} and all(r["score"] >= 1 - 8 / 64 for r in rows)
    assert not {keys["photo_00000.jpg"], keys["photo_00001.jpg"]} & {r["key"] for r in rows}
    report = (data / "marks" / "leaks" / "report.md").read_text()
    assert all(f"`{keys[name]}`" in report and f"`{match}`" in report for name, match in copies.items())
    assert keys["photo_00000.jpg"] not in report and keys["photo_00001.jpg"] not in report
    with Image.open(data / "marks" / "leaks" / "report.png") as pairs:
        assert pairs.height >= 3 * 128
    summary = mark_sets(data)[LEAKS]
    assert summary["per_subject"] == {"cat": 1, "dog": 2} and summary["samples_checked"] == 5
    assert summary["benchmark"] == str(bench) and summary["marked"] == 3


@pytest.mark.slow
def test_a_dataset_without_leaks_prints_0_and_exits_0(leaky, capsys):
    other = leaky["root"] / "other_bench"
    write_photos(other / "dog", 2, size=128, start=200)
    assert main(["decontaminate", str(leaky["data"]), "--against", str(other), "--no-flow"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"0 training samples match the benchmark {other} (5 samples in 1 shard(s) checked")
    assert mark_sets(leaky["data"])[LEAKS]["marked"] == 0 and _marks(leaky["data"]) == []
    with Image.open(io.BytesIO((leaky["data"] / "marks" / "leaks" / "report.png").read_bytes())) as image:
        assert image.width > 0
