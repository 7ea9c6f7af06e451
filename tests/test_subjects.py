import numpy as np
import pytest

from storage.sample import Detection, Reject, Sample, SourceRef
from tasks.config import BuildConfig
from tasks.subjects import SelectSubjects


def det(noun, logit):
    return Detection(noun, 0, len(noun), np.zeros(4, np.float32), logit)


def run(*detections):
    sample = Sample(key="k", source="s", ref=SourceRef("unused"))
    sample.detections = list(detections)
    SelectSubjects.create(BuildConfig())([sample])
    return sample


@pytest.mark.parametrize(("count", "kept"), [(0, False), (1, True), (4, True), (5, False)])
def test_subject_count(count, kept):
    sample = run(*[det(f"n{i}", 0.5) for i in range(count)])
    assert sample.accepted == kept
    if kept:
        assert len(sample.subjects) == count
    else:
        reason = f"{count} subjects, outside subjects.min_subjects..max_subjects=1..4"
        assert sample.reject == Reject("subjects", reason)
        assert sample.subjects == []


def test_one_subject_per_noun_best_box_highest_logit_first():
    dog_low, dog_high, cat, cup = det("dog", 0.4), det("dog", 0.8), det("cat", 0.6), det("cup", 0.9)
    sample = run(dog_low, cat, dog_high, cup)
    assert [(d.noun, d.logit) for d in sample.subjects] == [("cup", 0.9), ("dog", 0.8), ("cat", 0.6)]
    assert sample.subjects[1] is dog_high


def test_repeated_nouns_count_once():
    sample = run(*[det(f"n{i}", 0.5) for i in range(4)], det("n0", 0.6), det("n1", 0.7))
    assert sample.accepted and len(sample.subjects) == 4


def test_rejected_sample_is_untouched():
    sample = Sample(key="k", source="s", ref=SourceRef("unused"))
    sample.detections = [det("dog", 0.5)]
    sample.reject_at("mask_filters", "why")
    SelectSubjects.create(BuildConfig())([sample])
    assert sample.reject == Reject("mask_filters", "why") and sample.subjects == []
