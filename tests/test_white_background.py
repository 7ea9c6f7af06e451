import numpy as np
import pytest

from storage.sample import Reject, Sample, SourceRef
from tasks.config import BuildConfig
from tasks.white_background import WhiteBackgroundFilter


def sample_with_white(count, white=(255, 255, 255), rest=(100, 150, 200)):
    """A 100 × 100 image whose first `count` pixels are `white`."""
    image = np.empty((100 * 100, 3), np.uint8)
    image[:] = rest
    image[:count] = white
    sample = Sample(key="k", source="s", ref=SourceRef("unused"))
    sample.image = image.reshape(100, 100, 3)
    return sample


def run(sample):
    WhiteBackgroundFilter.create(BuildConfig())([sample])
    return sample


@pytest.mark.parametrize(("count", "kept"), [(900, True), (1000, True), (1100, False)])
def test_white_fraction_against_max_fraction(count, kept):
    sample = run(sample_with_white(count))
    assert sample.accepted == kept
    if not kept:
        assert sample.reject is not None
        assert sample.reject.stage == "white_background"
        assert sample.reject.reason.startswith("white fraction 0.1100 > white_background.max_fraction=0.1")


def test_white_means_every_channel_above_the_threshold():
    # 0.9 × 255 = 229.5: 230 is white, 229 is not; one channel below keeps a pixel from being white.
    assert not run(sample_with_white(1100, white=(230, 230, 230))).accepted
    assert run(sample_with_white(1100, white=(229, 229, 229))).accepted
    assert run(sample_with_white(1100, white=(255, 255, 229))).accepted


def test_rejected_sample_is_untouched():
    sample = sample_with_white(10_000)
    sample.reject_at("decode", "why")
    assert run(sample).reject == Reject("decode", "why")


@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.8, 0.9, 0.999, 1.0])
def test_the_uint8_count_is_the_per_channel_comparison(threshold):
    from tasks.white_background import white_fraction

    rng = np.random.default_rng(3)
    image = rng.integers(180, 256, (64, 48, 3), dtype=np.uint8)
    assert white_fraction(image, threshold) == pytest.approx(float(np.all(image > threshold * 255, axis=-1).mean()))
