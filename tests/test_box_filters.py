import numpy as np
import pytest

from storage.sample import Detection, Reject, Sample, SourceRef
from tasks.box_filters import BoxFilters
from tasks.config import BuildConfig

GOOD = (10, 10, 40, 40)  # area ratio 0.09, width/height 1 in the 100 × 100 image


def det(noun="dog", box=GOOD, logit=0.5):
    return Detection(noun, 0, len(noun), np.array(box, np.float32), logit)


def run(*detections):
    sample = Sample(key="k", source="s", ref=SourceRef("unused"))
    sample.image = np.zeros((100, 100, 3), np.uint8)
    sample.detections = list(detections)
    BoxFilters.create(BuildConfig())([sample])
    return sample


@pytest.mark.parametrize(("count", "kept"), [(0, False), (1, True), (8, True), (9, False)])
def test_image_box_count(count, kept):
    sample = run(*[det(f"n{i}") for i in range(count)])
    assert sample.accepted == kept
    if not kept:
        assert sample.reject == Reject("box_filters", f"{count} boxes, outside boxes.min_boxes..max_boxes=1..8")


def test_box_count_is_taken_before_the_per_box_filters():
    # 9 boxes of which 8 fail the per-box rules: the image still has too many boxes.
    sample = run(det("a"), *[det(f"n{i}", logit=0.1) for i in range(8)])
    assert sample.reject is not None and sample.reject.reason.startswith("9 boxes")


@pytest.mark.parametrize(("same", "kept"), [(6, True), (7, False)])
def test_identical_objects(same, kept):
    sample = run(*[det("dog") for _ in range(same)], det("cat"))
    assert sample.accepted == kept
    if not kept:
        assert sample.reject == Reject("box_filters", "7 boxes of 'dog' > boxes.max_identical=6")


@pytest.mark.parametrize(
    ("box", "logit", "kept"),
    [
        ((0, 0, 20, 39.5), 0.5, False),  # area ratio 0.079
        ((0, 0, 20, 40.5), 0.5, True),  # 0.081
        ((0, 0, 20, 40), 0.5, False),  # 0.08: the bounds are exclusive
        ((0, 0, 100, 69), 0.5, True),  # 0.69
        ((0, 0, 100, 71), 0.5, False),  # 0.71
        ((0, 0, 29, 100), 0.5, False),  # width/height 0.29
        ((0, 0, 31, 100), 0.5, True),  # 0.31
        ((0, 0, 87, 30), 0.5, True),  # 2.9
        ((0, 0, 93, 30), 0.5, False),  # 3.1
        ((0, 0, 90, 30), 0.5, False),  # 3.0
        (GOOD, 0.29, False),
        (GOOD, 0.31, True),
        (GOOD, 0.3, False),
    ],
)
def test_per_box_thresholds(box, logit, kept):
    sample = run(det("cat", box, logit), det("dog"))  # the good dog keeps the image
    assert sample.accepted
    assert [d.noun for d in sample.detections] == (["cat", "dog"] if kept else ["dog"])


def test_no_box_left_rejects_with_each_boxs_problem():
    sample = run(det("cat", (0, 0, 20, 39.5)), det("dog", (0, 0, 29, 100)), det("cow", logit=0.29))
    assert sample.reject == Reject(
        "box_filters",
        "no box passes the per-box filters: area ratio 0.079 not in (0.08, 0.7); "
        "width/height 0.290 not in (0.3, 3.0); logit 0.290 <= 0.3",
    )


def test_rejected_sample_is_untouched():
    sample = Sample(key="k", source="s", ref=SourceRef("unused"))
    sample.reject_at("decode", "why")
    BoxFilters.create(BuildConfig())([sample])
    assert sample.reject == Reject("decode", "why")
