"""Stage fingerprints and the kept outputs of the model stages (what a re-filter reuses), without Ray."""

import json

import numpy as np
import pytest

from storage.kept import KeptOutputs, kept_rows
from storage.sample import Detection, Noun, Sample, SourceRef
from tasks.boxes import Boxes
from tasks.caption import Caption
from tasks.config import load_build_config
from tasks.masks import Masks, mask_of, rle_of
from tasks.nouns import Nouns
from tasks.pipeline import stage_fingerprints


def _changed(*overrides: str) -> set[str]:
    """The model stages whose fingerprint the overrides change."""
    base, new = stage_fingerprints(load_build_config(), "tiny"), stage_fingerprints(load_build_config(
        overrides=list(overrides)), "tiny")
    return {stage for stage in base if base[stage] != new[stage]}


def test_a_box_filter_bound_leaves_the_detector_and_everything_before_it():
    assert _changed("boxes.max_area_ratio=0.5") == {"masks", "features"}


def test_the_detector_threshold_changes_it_and_every_later_stage():
    assert _changed("boxes.box_threshold=0.3") == {"boxes", "masks", "features"}
    assert _changed("caption.max_new_tokens=10") == {"caption", "nouns", "boxes", "masks", "features"}
    assert _changed("resolution.min_side=512") == {"caption", "nouns", "boxes", "masks", "features"}


def test_placement_and_batch_sizes_change_no_fingerprint():
    assert _changed("boxes.batch_size=2", "masks.batch_size=1", "runtime.ray_cpus=3", "runtime.actors.masks=2",
                    "runtime.dtype=bfloat16", "input.unit_size=7", "split.train_fraction=0.5") == set()


def test_the_model_is_in_the_fingerprint():
    cfg = load_build_config()
    assert stage_fingerprints(cfg, "tiny")["caption"] != stage_fingerprints(cfg, "paper-shapes")["caption"]
    assert _changed("models.spacy=en_core_web_md") >= {"nouns", "boxes"}


def test_a_stage_version_changes_its_fingerprint(monkeypatch):
    before = stage_fingerprints(load_build_config(), "tiny")
    monkeypatch.setattr(Masks, "version", Masks.version + 1)
    after = stage_fingerprints(load_build_config(), "tiny")
    assert {s for s in before if before[s] != after[s]} == {"masks", "features"}


@pytest.mark.parametrize("shape", [(7, 5), (64, 48), (1, 1)])
def test_masks_round_trip_through_coco_rle(shape):
    rng = np.random.default_rng(0)
    mask = rng.random(shape) > 0.5
    rle = rle_of(mask)
    assert rle["size"] == list(shape) and isinstance(rle["counts"], str)
    json.dumps(rle)  # JSON-able as it is
    assert np.array_equal(mask_of(rle), mask)


def _sample(key: str = "k") -> Sample:
    return Sample(key=key, source=key, ref=SourceRef(key), content="c" * 32, image=np.zeros((20, 30, 3), np.uint8))


def test_each_model_stage_puts_back_what_it_output():
    cfg = load_build_config()
    sample = _sample()
    sample.caption = "a dog and a ball"
    sample.nouns = [Noun("dog", 2, 5), Noun("ball", 12, 16)]
    box = np.array([1.5, 2.25, 10.125, 19.0], np.float32)
    sample.detections = [Detection("dog", 2, 5, box, 0.4321), Detection("ball", 12, 16, box + 1, 0.2)]
    for det in sample.detections:
        det.mask = np.zeros((20, 30), bool)
        det.mask[3:9, 4:11] = True
    copy = _sample()
    for stage in (Caption, Nouns, Boxes, Masks):
        runner = stage.from_config(cfg, "tiny")
        record = {"reject": None, "value": json.loads(json.dumps(runner.output(sample)))}
        runner.restore([copy], [record])
        assert copy.kept[stage.name]["reused"] is True
    assert copy.caption == sample.caption and copy.nouns == sample.nouns
    assert [(d.noun, d.start, d.end, d.logit) for d in copy.detections] == [
        (d.noun, d.start, d.end, d.logit) for d in sample.detections]
    for got, want in zip(copy.detections, sample.detections, strict=True):
        assert got.box.dtype == np.float32 and np.array_equal(got.box, want.box)
        assert got.mask is not None and want.mask is not None and np.array_equal(got.mask, want.mask)


def test_a_kept_reject_rejects_again_with_its_reason_and_a_thumbnail():
    sample = _sample()
    Boxes.from_config(load_build_config(), "tiny").restore([sample], [{"reject": "no boxes detected", "value": {}}])
    assert sample.reject is not None and (sample.reject.stage, sample.reject.reason) == ("boxes", "no boxes detected")
    assert sample.thumbnail is not None and sample.image is None
    rows = kept_rows(sample, {"boxes": "f" * 16})
    assert rows == [{"key": "k", "content": "c" * 32, "stage": "boxes", "fingerprint": "f" * 16,
                     "reject": "no boxes detected", "value": "{}"}]


def test_kept_outputs_are_found_by_content_and_stage_only():
    kept = KeptOutputs({("c" * 32, "caption"): {"reject": None, "value": {"caption": "x"}}})
    assert kept.get("c" * 32, "caption") is not None
    assert kept.get("c" * 32, "boxes") is None
    assert kept.get("d" * 32, "caption") is None
    assert kept.get(None, "caption") is None  # an input that never decoded
