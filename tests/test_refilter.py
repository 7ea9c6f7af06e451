"""Re-filtering from kept model outputs (build-dataset --reuse): only the stages whose fingerprint changed, and those
after them, run again, and the result is the dataset a build from scratch with the new parameters writes."""

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import BUILD_SETTINGS

from lambda_eclipse.errors import UserError
from storage.layout import complete_shards, read_json, shard_paths, write_json_atomic
from tasks.plan import prepare_build

pytestmark = pytest.mark.slow
MODEL_STAGES = ("caption", "nouns", "boxes", "masks", "features")
# A box-filter bound that rejects part of what the default keeps on the session's photos (tiny profile)
BOX_FILTER = "boxes.min_logit=0.9"


def _stats(root) -> list[dict]:
    return [read_json(shard_paths(root, s)["stats"]) for s in complete_shards(root)]


def _per_stage(root, what: str) -> dict[str, int]:
    totals: dict[str, int] = dict.fromkeys(MODEL_STAGES, 0)
    for stats in _stats(root):
        for stage, n in stats[what].items():
            totals[stage] += n
    return totals


def _table(root, kind: str, sort: str = "key") -> pa.Table:
    tables = [pq.read_table(shard_paths(root, s)[kind]) for s in complete_shards(root)]
    table = pa.concat_tables(tables)
    return table.sort_by(sort) if table.num_rows else table


@pytest.fixture(scope="module")
def refiltered(built_dataset, tmp_path_factory):
    """The session's dataset re-filtered with a changed box-filter bound, and the same built from scratch."""
    from flows.build_dataset import build_dataset

    photos, out, _ = built_dataset
    root = tmp_path_factory.mktemp("refilter")
    settings = [*BUILD_SETTINGS, BOX_FILTER]
    reused = build_dataset(inputs=[str(photos)], output=str(root / "reused"), profile="tiny", overrides=settings,
                           reuse=str(out))
    scratch = build_dataset(inputs=[str(photos)], output=str(root / "scratch"), profile="tiny", overrides=settings)
    return out, root / "reused", root / "scratch", reused, scratch


def test_a_changed_box_filter_runs_no_caption_nouns_or_boxes_model(refiltered):
    old, reused, _, _, _ = refiltered
    computed, taken = _per_stage(reused, "computed_by_stage"), _per_stage(reused, "reused_by_stage")
    assert computed["caption"] == computed["nouns"] == computed["boxes"] == 0, computed
    # every input that decoded reached the caption model in the old build, and its outputs were all taken
    assert taken["caption"] == _per_stage(old, "computed_by_stage")["caption"] > 0
    assert taken["boxes"] == _per_stage(old, "computed_by_stage")["boxes"] > 0
    # the box filters come before SAM and CLIP: both ran again, on what the new bound left
    assert taken["masks"] == taken["features"] == 0
    assert computed["masks"] > 0


def test_the_refiltered_dataset_equals_a_build_from_scratch(refiltered):
    _, reused, scratch, summary_reused, summary_scratch = refiltered
    for key in ("inputs", "accepted", "rejected", "shards"):
        assert summary_reused[key] == summary_scratch[key], key
    # the bound changed the dataset, else this test would show nothing
    old_rejects = _table(refiltered[0], "rejects").column("stage").to_pylist()
    new_rejects = _table(reused, "rejects").column("stage").to_pylist()
    assert new_rejects.count("box_filters") > old_rejects.count("box_filters")
    assert _table(reused, "parquet").equals(_table(scratch, "parquet"))
    cols = ["key", "stage", "reason", "thumbnail"]
    assert _table(reused, "rejects").select(cols).equals(_table(scratch, "rejects").select(cols))
    # and the kept outputs themselves: the same rows, told apart only by where they came from (the stats)
    assert _table(reused, "kept").sort_by([("key", "ascending"), ("stage", "ascending")]).equals(
        _table(scratch, "kept").sort_by([("key", "ascending"), ("stage", "ascending")]))


def test_an_upstream_change_runs_that_stage_and_every_later_one(built_dataset, tmp_path):
    from flows.build_dataset import build_dataset

    photos, out, _ = built_dataset
    build_dataset(inputs=[str(photos)], output=str(tmp_path / "new"), profile="tiny",
                  overrides=[*BUILD_SETTINGS, "caption.max_new_tokens=12"], reuse=str(out))
    computed, taken = _per_stage(tmp_path / "new", "computed_by_stage"), _per_stage(tmp_path / "new",
                                                                                  "reused_by_stage")
    assert taken == dict.fromkeys(MODEL_STAGES, 0), taken
    assert computed["caption"] == _per_stage(out, "computed_by_stage")["caption"]


def test_kept_outputs_name_the_input_and_the_stage(built_dataset):
    _, out, _ = built_dataset
    kept = _table(out, "kept")
    rows = kept.to_pylist()
    assert {r["stage"] for r in rows} == set(MODEL_STAGES)
    assert all(len(r["content"]) == 32 for r in rows)
    masks = [json.loads(r["value"])["masks"] for r in rows if r["stage"] == "masks" and r["reject"] is None]
    assert masks and all(isinstance(m["counts"], str) and len(m["size"]) == 2 for ms in masks for m in ms)
    fingerprints = {(r["stage"], r["fingerprint"]) for r in rows}
    assert len(fingerprints) == len(MODEL_STAGES)  # one config: one fingerprint per stage


def test_reuse_of_a_dataset_without_kept_outputs_fails_in_one_line(built_dataset, tmp_path):
    photos, out, _ = built_dataset
    old = tmp_path / "old"
    shutil.copytree(out, old)
    for shard in complete_shards(old):  # as a dataset written before model outputs were kept
        paths = shard_paths(old, shard)
        stats = read_json(paths["stats"])
        stats["files"] = {k: v for k, v in stats["files"].items() if not k.endswith("_kept.parquet")}
        write_json_atomic(paths["stats"], stats)
        Path(paths["kept"]).unlink()
    with pytest.raises(UserError, match=r"^--reuse .*old: its shards keep no model outputs") as err:
        prepare_build([str(photos)], str(tmp_path / "new"), overrides=BUILD_SETTINGS, reuse=str(old))
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="is the --output itself"):
        prepare_build([str(photos)], str(out), overrides=BUILD_SETTINGS, reuse=str(out))
    with pytest.raises(UserError, match="does not exist"):
        prepare_build([str(photos)], str(tmp_path / "new"), overrides=BUILD_SETTINGS, reuse=str(tmp_path / "none"))
    with pytest.raises(UserError, match="not a dataset directory"):
        prepare_build([str(photos)], str(tmp_path / "new"), overrides=BUILD_SETTINGS, reuse=str(photos))
