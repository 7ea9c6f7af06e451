"""The build-dataset flow end to end on the tiny profile: Prefect + Ray + every stage + the shard contract."""

import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import BUILD_SETTINGS, shard_keys

from lambda_eclipse.errors import UserError
from lambda_eclipse.synthetic import write_photos
from storage.layout import complete_shards, read_json, sha256_file, shard_names, shard_paths
from storage.manifest import read_manifest
from storage.reader import iter_samples, load_dataset_meta
from storage.sources import plan_inputs
from tasks.config import load_build_config

pytestmark = pytest.mark.slow
SETTINGS = BUILD_SETTINGS


def _accepted_keys(root: Path) -> set[str]:
    return {row["key"] for row in iter_samples(root, columns=["key"])}


@pytest.fixture(scope="module")
def built(built_dataset):
    """The session's flow-built dataset (conftest.built_dataset): photos, dataset, summary."""
    return built_dataset


def test_every_input_is_accounted_for(built):
    photos, out, summary = built
    assert summary["inputs"] == 16 and summary["shards"] == 4
    assert summary["accepted"] + summary["rejected"] == 16
    assert summary["accepted"] > 0, "the tiny profile must yield accepted samples on ordinary photos"
    keys = shard_keys(out)
    assert len(keys) == 16 and len(set(keys)) == 16
    rejects = {
        r["source"].split("/")[-1]: r
        for s in complete_shards(out)
        for r in pq.read_table(shard_paths(out, s)["rejects"]).to_pylist()
    }
    assert rejects["empty.jpg"]["stage"] == "decode"
    assert rejects["text.png"]["stage"] == "decode"
    assert rejects["truncated.jpg"]["stage"] == "decode"
    assert rejects["photo_00000.jpg"]["stage"] == "resolution" if "photo_00000.jpg" in rejects else True


def test_stats_describe_the_files_and_the_funnel(built):
    _, out, _ = built
    for shard in complete_shards(out):
        paths = shard_paths(out, shard)
        stats = read_json(paths["stats"])
        for name in ("parquet", "tar", "rejects"):
            assert stats["files"][shard_names(shard)[name]]["sha256"] == sha256_file(paths[name])
        assert stats["inputs"] == stats["accepted"] + stats["rejected"]
        assert stats["funnel"][0]["in"] == stats["inputs"]
        assert stats["funnel"][-1]["in"] - stats["funnel"][-1]["rejected"] == stats["accepted"]
        assert pq.read_metadata(paths["parquet"]).num_rows == stats["accepted"]


def test_dropped_subjects_are_totalled_in_the_summary(built):
    _, out, summary = built
    per_sample = 0
    for shard in complete_shards(out):
        with tarfile.open(shard_paths(out, shard)["tar"]) as tar:
            per_sample += sum(len(json.load(tar.extractfile(m))["dropped_subjects"])  # pyright: ignore[reportArgumentType]
                              for m in tar if m.name.endswith(".json"))
    per_shard = sum(read_json(shard_paths(out, s)["stats"])["dropped_subjects"] for s in complete_shards(out))
    assert summary["dropped_subjects"] == per_shard == per_sample
    assert f"{per_shard} subject(s) dropped from accepted samples" in (out / "summary.md").read_text()


def test_dataset_json_and_features_have_the_dims(built):
    _, out, _ = built
    meta = load_dataset_meta(out)
    assert meta["profile"] == "tiny" and meta["config_hash"] == load_build_config(overrides=SETTINGS).content_hash()
    d, w = meta["embed_dim"], meta["text_width"]
    assert len(meta["zero_image_embedding"]) == d
    for row in iter_samples(out):
        assert row["text_hidden_states"].shape == (77, w)
        assert row["target_embedding"].shape == (d,) and row["edge_embedding"].shape == (d,)
        assert row["subject_embeddings"].shape == (len(row["subjects"]), d)
        assert 1 <= len(row["subjects"]) <= 4
        for subject in row["subjects"]:
            assert row["caption"][subject["char_start"] : subject["char_end"]] == subject["noun"]
            assert all(0 < p < 76 for p in subject["token_positions"])


def test_dashboard_outputs(built):
    _, out, _ = built
    assert (out / "contact_sheet.png").stat().st_size > 0
    summary = (out / "summary.md").read_text()
    assert "| decode |" in summary and "| features |" in summary
    # the rejects gallery (conftest.flow_inputs): three files that do not decode show their reasons alone; the photo
    # below resolution.min_side shows its thumbnail, made on the worker
    gallery = summary[summary.index("## Rejects gallery"):]
    assert "### decode: 3 rejected" in gallery and "### resolution: 1 rejected" in gallery
    undecoded = re.findall(r"^\| \(no image\) \| `[^`]*/bad/(\w+\.\w+)` \| ", gallery, re.M)
    assert sorted(undecoded) == ["empty.jpg", "text.png", "truncated.jpg"]
    assert re.search(r"^\| !\[rejected \w+\]\(data:image/jpeg;base64,[^)]+\) \| `[^`]*/small/photo_00000\.jpg` \| "
                     r"64×64 px: shorter side 64 < resolution\.min_side=96 \|$", gallery, re.M), gallery

    from prefect.client.orchestration import get_client

    # Prefect 3.8.8's own read_artifacts sends null filters that its server rejects (422); send the filter
    # body the UI sends.
    with get_client(sync_client=True) as client:
        response = client._client.post(
            "/artifacts/filter",
            json={"artifacts": {"key": {"any_": [f"build-dataset-{k}" for k in ("progress", "shards", "summary")]}},
                  "sort": "CREATED_DESC", "limit": 50},
        )
    latest = {}
    for artifact in response.json():
        latest.setdefault(artifact["key"], artifact)  # newest first
    assert latest["build-dataset-progress"]["type"] == "progress" and latest["build-dataset-progress"]["data"] == 100.0
    shards, summary = latest["build-dataset-shards"], latest["build-dataset-summary"]
    assert shards["type"] == "table" and "rejected: decode" in shards["data"] and "masks /s" in shards["data"]
    assert "busy: masks" in shards["data"] and "busy: caption" in shards["data"]  # each model stage's busy fraction
    table = json.loads(shards["data"])  # the totals row, then the slowest, most rejecting and latest shards
    assert table[0]["shown"] == "total" and table[0]["shard"] == "4 shards" and table[0]["inputs"] == 16
    assert sorted(r["shard"] for r in table if r["shown"] == "latest") == ["00000", "00001", "00002", "00003"]
    log = pq.ParquetDataset(out / "build_log").read()  # every shard's row, beside the shards
    assert sorted(log.column("shard").to_pylist()) == [0, 1, 2, 3] and sum(log.column("inputs").to_pylist()) == 16
    progress = latest["build-dataset-progress"]["description"]  # the pace over the last minutes (the ETA while left)
    assert re.fullmatch(r"4/4 shards complete · [\d.]+ images/s, [\d.]+ accepted samples/s over the last 5 min",
                        progress), progress
    assert summary["type"] == "markdown" and "| features |" in summary["data"]
    assert "![contact sheet](data:image/jpeg;base64," in summary["data"]  # shown by the UI on any machine
    assert "## Rejects gallery" in summary["data"] and "![rejected " in summary["data"]


def test_rerun_skips_complete_shards(built):
    from flows.build_dataset import build_dataset

    photos, out, summary = built
    before = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    again = build_dataset(inputs=[str(photos)], output=str(out), profile="tiny", overrides=SETTINGS)
    assert again == summary | {"nodes": 0}  # nothing to build: no Ray node was used
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()} == before


def test_flow_matches_the_plain_in_process_loop(built):
    from tasks.pipeline import build_stages, run_local

    photos, out, _ = built
    cfg = load_build_config(overrides=SETTINGS)
    units = plan_inputs([str(photos)], cfg.input.unit_size, cfg.input.extensions).units
    stages = build_stages(cfg, "tiny")
    samples = [s for u in units for s in u.iter_samples(cfg.input.extensions)]
    accepted = {s.key for s in run_local(samples, stages) if s.accepted}
    assert accepted == _accepted_keys(out)


def test_added_inputs_become_new_shards_and_complete_ones_are_untouched(built, tmp_path):
    """img2dataset's incremental mode: a growing folder is built shard by shard; old shards are never rewritten."""
    from flows.build_dataset import build_dataset

    photos, reference, _ = built
    grown = tmp_path / "grown"
    write_photos(grown, 6, size=128)
    out = tmp_path / "dataset"
    first = build_dataset(inputs=[str(grown)], output=str(out), profile="tiny", overrides=SETTINGS)
    assert first["shards"] == 2 and first["inputs"] == 6
    before = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    write_photos(grown / "more", 3, size=128)
    (grown / "more" / "photo_00001.jpg").rename(grown / "a_first.jpg")  # sorts before every old file
    second = build_dataset(inputs=[str(grown)], output=str(out), profile="tiny", overrides=SETTINGS)
    assert second["shards"] == 3 and second["inputs"] == 9
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir() if p.name in before} == before
    stats = read_json(shard_paths(out, 2)["stats"])
    assert stats["unit"]["description"] == f"folder {grown} [6:9]" and stats["inputs"] == 3
    keys = shard_keys(out)
    assert len(keys) == 9 and len(set(keys)) == 9

    (grown / "photo_00000.jpg").write_bytes((grown / "photo_00001.jpg").read_bytes()[:500])
    from tasks.plan import prepare_build

    with pytest.raises(UserError) as caught:
        prepare_build([str(grown)], str(out), overrides=SETTINGS)
    assert str(caught.value).startswith(
        f"shard 00000 in {out} is complete, but its inputs (folder {grown} [0:5]) changed since it was built: "
    )
    assert f"{grown}/photo_00000.jpg: " in str(caught.value) and "→ 500 bytes" in str(caught.value)


def test_dry_run_plans_without_starting_anything(built):
    photos, out, _ = built
    (photos / "later.jpg").write_bytes((photos / "photo_00002.jpg").read_bytes())
    try:
        cmd = [sys.executable, "-m", "flows.cli", "build-dataset", "--input", str(photos)]
        cmd += ["--output", str(out)]
        run = subprocess.run([*cmd, *(a for s in SETTINGS for a in ("--set", s)), "--dry-run"],
                             capture_output=True, text=True, timeout=120)
    finally:
        (photos / "later.jpg").unlink()
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        f"{out}: 5 work units (1 new), 4 shards complete, 1 to build: 1 images",
        f"  shard 00004  folder {photos} [16:17]  (1 images)",
    ]
    assert not (out / "shards" / "00004_stats.json").exists()
    manifest = read_manifest(out)
    assert manifest is not None and len(manifest) == 4  # a dry run writes nothing


def test_many_small_units_publish_a_bounded_dashboard(tmp_path, prefect_harness, ray_local):
    """120 one-photo units, each rejected from its header (cheap for the workers): the run stores a shard table of a
    fixed number of rows in a few versions and one progress artifact, and its build log holds every shard."""
    import io

    from PIL import Image
    from prefect.client.orchestration import get_client

    from flows.build_dataset import build_dataset
    from flows.shard_table import LATEST, WORST

    photos = tmp_path / "tiny_photos"
    photos.mkdir()
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buf, format="JPEG")
    for i in range(120):
        (photos / f"p{i:04d}.jpg").write_bytes(buf.getvalue())
    out = tmp_path / "dataset"
    state = build_dataset(inputs=[str(photos)], output=str(out), profile="tiny",
                          overrides=[*SETTINGS, "input.unit_size=1"], return_state=True)
    summary = state.result()
    assert summary["shards"] == 120 and summary["rejected"] == 120
    with get_client(sync_client=True) as client:  # the UI's filter body (see test_dashboard_outputs)
        response = client._client.post("/artifacts/filter", json={
            "artifacts": {"flow_run_id": {"any_": [str(state.state_details.flow_run_id)]}}, "sort": "CREATED_DESC",
            "limit": 200})
    stored = response.json()
    tables = [a for a in stored if a["key"] == "build-dataset-shards"]
    assert 1 <= len(tables) <= 3  # the first shard's, one a minute at most, the final one
    rows = json.loads(tables[0]["data"])  # newest first
    assert len(rows) == 1 + 2 * WORST + LATEST and rows[0]["shard"] == "120 shards"
    assert sum(len(a["data"]) for a in tables) < 60_000
    assert [a["key"] for a in stored].count("build-dataset-progress") == 1  # updated in place
    log = pq.ParquetDataset(out / "build_log").read()
    assert sorted(log.column("shard").to_pylist()) == list(range(120))
