"""build-dataset --sample: a sample of the inputs built as a dataset, its forecast for the whole listing, and a full
build that reuses the sample's model outputs and shows its numbers beside the forecast."""

import json

import pytest

from lambda_eclipse.errors import UserError
from lambda_eclipse.synthetic import write_photos
from storage.layout import complete_shards, read_json, shard_paths
from tasks.plan import prepare_build

pytestmark = pytest.mark.slow
SETTINGS = ["resolution.min_side=96", "input.unit_size=5"]
BIG, SMALL = 16, 4  # a fixed set: a fifth of it below resolution.min_side


@pytest.fixture(scope="module")
def sampled(tmp_path_factory, prefect_harness, ray_local):
    from flows.build_dataset import build_dataset

    root = tmp_path_factory.mktemp("sample")
    photos = root / "photos"
    write_photos(photos / "big", BIG, size=128)
    write_photos(photos / "small", SMALL, size=64, start=BIG)
    summary = build_dataset(inputs=[str(photos)], output=str(root / "sample"), profile="tiny", overrides=SETTINGS,
                            sample=0.5)
    full = build_dataset(inputs=[str(photos)], output=str(root / "full"), profile="tiny", overrides=SETTINGS,
                         reuse=str(root / "sample"))
    return photos, root, summary, full


def test_the_sample_is_half_of_every_folder(sampled):
    _, root, summary, _ = sampled
    assert summary["inputs"] == (BIG + SMALL) // 2
    rejects = [r for s in complete_shards(root / "sample") for r in
               read_json(shard_paths(root / "sample", s)["stats"])["funnel"] if r["stage"] == "resolution"]
    assert sum(r["rejected"] for r in rejects) == SMALL // 2  # stratified: half the small folder, no more
    assert read_json(root / "sample" / "dataset.json")["sample"] == 0.5


def test_the_forecast_covers_the_whole_listing(sampled):
    _, root, summary, full = sampled
    outlook = json.loads((root / "sample" / "forecast.json").read_text())
    assert outlook == summary["forecast"]
    assert outlook["listing"] == {"images": BIG + SMALL, "estimated": False}
    resolution = next(r for r in outlook["stages"] if r["stage"] == "resolution")
    assert (resolution["in"], resolution["rejected"]) == ((BIG + SMALL) // 2, SMALL // 2)
    assert resolution["low"] < resolution["pass_rate"] == BIG / (BIG + SMALL) < resolution["high"]
    accepted = outlook["accepted"]
    # the full build's count falls inside the sample's 95 % interval
    assert accepted["low"] <= full["accepted"] <= accepted["high"]
    assert accepted["high"] - accepted["low"] > 0
    names = [c["name"] for c in outlook["clusters"]]
    assert names[0] == "the sample's cluster" and len(names) > 2
    assert all(c["hours"] and c["hours"] > 0 for c in outlook["clusters"])


def test_the_full_build_reuses_the_sample_and_shows_the_forecast(sampled):
    _, root, summary, full = sampled
    assert full["inputs"] == BIG + SMALL
    reused = computed = 0
    for shard in complete_shards(root / "full"):
        stats = read_json(shard_paths(root / "full", shard)["stats"])
        reused += stats["reused_by_stage"]["caption"]
        computed += stats["computed_by_stage"]["caption"]
    assert reused == summary["inputs"] - SMALL // 2  # every sampled photo that reached the captioner
    assert computed == BIG - reused
    text = (root / "full" / "summary.md").read_text()
    assert "# forecast vs actual" in text and f"| {full['accepted']} |" in text


def test_a_sample_and_a_full_build_never_share_an_output(sampled):
    photos, root, _, _ = sampled
    with pytest.raises(UserError, match=r"holds a sample \(--sample 0.5\), but this run is a full build"):
        prepare_build([str(photos)], str(root / "sample"), overrides=SETTINGS)
    with pytest.raises(UserError, match=r"holds a sample \(--sample 0.5\), but this run is --sample 0.25"):
        prepare_build([str(photos)], str(root / "sample"), overrides=SETTINGS, sample=0.25)
    with pytest.raises(UserError, match=r"--sample 1.5: give a fraction"):
        prepare_build([str(photos)], str(root / "other"), overrides=SETTINGS, sample=1.5)
