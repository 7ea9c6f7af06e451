import numpy as np
import pytest

from storage.sample import Detection, Reject, Sample, SourceRef
from tasks.config import BuildConfig
from tasks.mask_filters import MaskFilters

SIZE = 200


def det(noun, box, logit, filled=None):
    """A detection whose mask covers the box's first `filled` pixels (row-major), all of it by default."""
    x0, y0, x1, y1 = box
    inside = np.zeros((y1 - y0) * (x1 - x0), bool)
    inside[: inside.size if filled is None else filled] = True
    mask = np.zeros((SIZE, SIZE), bool)
    mask[y0:y1, x0:x1] = inside.reshape(y1 - y0, x1 - x0)
    return Detection(noun, 0, len(noun), np.array(box, np.float32), logit, mask=mask)


def run(*detections):
    sample = Sample(key="k", source="s", ref=SourceRef("unused"))
    sample.image = np.zeros((SIZE, SIZE, 3), np.uint8)
    sample.detections = list(detections)
    MaskFilters.create(BuildConfig())([sample])
    return sample


@pytest.mark.parametrize(("filled", "kept"), [(39, False), (40, True), (41, True)])
def test_mask_ratio_against_min_mask_ratio(filled, kept):
    cat = det("cat", (0, 0, 10, 10), 0.5, filled)  # 10 × 10 box
    sample = run(cat, det("dog", (100, 100, 150, 150), 0.4))
    assert cat.mask_ratio == pytest.approx(filled / 100)
    assert ("cat" in [d.noun for d in sample.detections]) == kept


def test_mask_outside_the_box_does_not_count():
    cat = det("cat", (0, 0, 10, 10), 0.5, filled=39)
    assert cat.mask is not None
    cat.mask[10:, :] = True
    sample = run(cat)
    assert cat.mask_ratio == pytest.approx(0.39)
    assert sample.reject == Reject("mask_filters", "no box left: mask/box ratios [0.39] < masks.min_mask_ratio=0.4")


@pytest.mark.parametrize(("x0", "kept"), [(21, True), (19, False), (20, True)])
def test_containment_against_max_containment(x0, kept):
    # The 100 × 10 box overlaps the 100 × 100 one by (100 - x0) × 10: containment 0.79, 0.81, 0.8.
    big = det("sofa", (0, 0, 100, 100), 0.9)
    small = det("cat", (x0, 0, x0 + 100, 10), 0.5)
    sample = run(small, big)
    assert [d.noun for d in sample.detections] == (["sofa", "cat"] if kept else ["sofa"])


def test_the_higher_logit_box_survives_containment():
    big = det("sofa", (0, 0, 100, 100), 0.5)
    small = det("cat", (10, 10, 30, 30), 0.9)
    assert [d.noun for d in run(big, small).detections] == ["cat"]


def test_a_box_dropped_for_its_mask_does_not_suppress_others():
    big = det("sofa", (0, 0, 100, 100), 0.9, filled=1000)  # ratio 0.1
    small = det("cat", (10, 10, 30, 30), 0.5)
    assert [d.noun for d in run(big, small).detections] == ["cat"]


def test_rejected_sample_is_untouched():
    sample = Sample(key="k", source="s", ref=SourceRef("unused"))
    sample.reject_at("box_filters", "why")
    sample.detections = [det("cat", (0, 0, 10, 10), 0.5, filled=0)]  # set after: reject_at drops them
    MaskFilters.create(BuildConfig())([sample])
    assert sample.reject == Reject("box_filters", "why")
    assert sample.detections[0].mask_ratio is None
