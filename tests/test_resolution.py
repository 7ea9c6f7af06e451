import numpy as np
import pytest

from storage.sample import Reject, Sample, SourceRef
from tasks.config import BuildConfig
from tasks.resolution import ResolutionFilter


def sample_of(height, width):
    sample = Sample(key="k", source="s", ref=SourceRef("unused"))
    sample.image = np.zeros((height, width, 3), np.uint8)
    return sample


@pytest.mark.parametrize(("height", "width", "kept"), [(1024, 1024, True), (1023, 2048, False), (2048, 1023, False)])
def test_shorter_side_against_min_side(height, width, kept):
    sample = sample_of(height, width)
    ResolutionFilter.create(BuildConfig())([sample])
    assert sample.accepted == kept
    if not kept:
        reason = f"{width}×{height} px: shorter side 1023 < resolution.min_side=1024"
        assert sample.reject == Reject("resolution", reason)


def test_min_side_comes_from_the_config():
    cfg = BuildConfig()
    cfg.resolution.min_side = 8
    small, tiny = sample_of(8, 9), sample_of(7, 9)
    ResolutionFilter.create(cfg)([small, tiny])
    assert small.accepted and not tiny.accepted


def test_rejected_sample_is_untouched():
    sample = sample_of(1, 1)
    sample.reject_at("decode", "why")
    ResolutionFilter.create(BuildConfig())([sample])
    assert sample.reject == Reject("decode", "why")
