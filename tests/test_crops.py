import numpy as np

from storage.sample import Detection, Reject, Sample, SourceRef
from tasks.config import BuildConfig
from tasks.crops import SubjectCrops

WHITE = [255, 255, 255]


def run(image, *subjects, size=224):
    cfg = BuildConfig()
    cfg.subjects.crop_size = size
    sample = Sample(key="k", source="s", ref=SourceRef("unused"))
    sample.image = image
    sample.subjects = list(subjects)
    SubjectCrops.create(cfg)([sample])
    return sample


def subject(box, mask):
    return Detection("dog", 0, 3, np.array(box, np.float32), 0.5, mask=mask)


def test_wide_box_exact_crop():
    # Pixels constant over 2 × 2 blocks, so that halving the 448 px square averages equal values: exact.
    base = np.random.default_rng(0).integers(0, 200, (150, 250, 3), dtype=np.uint8)
    image = base.repeat(2, axis=0).repeat(2, axis=1)  # 300 × 500
    mask = np.ones((300, 500), bool)  # outside the box: must not matter
    mask[30:254, 244:468] = False  # the box's right half is not the subject
    dog = subject((20, 30, 468, 254), mask)  # 448 wide × 224 tall
    run(image, dog)
    assert dog.crop is not None
    expected = np.full((224, 224, 3), 255, np.uint8)
    expected[56:168, :112] = base[15:127, 10:122]  # centred vertically: (448 - 224) / 2 / 2 = 56 rows of white
    assert dog.crop.dtype == np.uint8
    assert (dog.crop == expected).all()


def test_tall_box_is_padded_left_and_right_and_enlarged():
    image = np.zeros((100, 100, 3), np.uint8)
    image[...] = [10, 200, 30]
    mask = np.zeros((100, 100), bool)
    mask[20:60, 50:70] = True
    dog = subject((50, 20, 70, 60), mask)  # 20 wide × 40 tall: 10 px of white each side, then ×5.6
    run(image, dog)
    assert dog.crop is not None
    assert dog.crop.shape == (224, 224, 3)
    assert (dog.crop[:, :50] == WHITE).all() and (dog.crop[:, 174:] == WHITE).all()
    # The subject keeps its aspect: 112 of 224 columns (56 … 168), exact beyond bicubic's reach (2 source px).
    assert (dog.crop[:, 66:158] == [10, 200, 30]).all()


def test_fractional_and_degenerate_boxes():
    image = np.zeros((50, 50, 3), np.uint8)
    mask = np.ones((50, 50), bool)
    snapped, empty = subject((9.6, 9.6, 20.4, 20.4), mask), subject((30, 30, 30, 30), mask)
    run(image, snapped, empty, size=11)
    assert snapped.crop is not None and empty.crop is not None
    assert (snapped.crop == 0).all()  # 10 … 20: 11 × 11 pixels, no white padding
    assert empty.crop.shape == (11, 11, 3) and (empty.crop == 0).all()  # at least 1 px


def test_rejected_sample_is_untouched():
    sample = Sample(key="k", source="s", ref=SourceRef("unused"), image=np.zeros((4, 4, 3), np.uint8))
    sample.subjects = [subject((0, 0, 1, 1), None)]
    sample.reject_at("subjects", "why")
    assert sample.image is None and sample.subjects == []  # a rejected sample drops its pixels at once
    sample.subjects = [subject((0, 0, 1, 1), None)]
    SubjectCrops.create(BuildConfig())([sample])
    assert sample.reject == Reject("subjects", "why") and sample.subjects[0].crop is None
