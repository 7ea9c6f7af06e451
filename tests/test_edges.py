import numpy as np

from lambda_eclipse.config import BuildConfig
from lambda_eclipse.sample import Reject, Sample, SourceRef
from tasks.edges import CannyEdge


def edges(gray, low=100, high=200):
    cfg = BuildConfig()
    cfg.edge.low_threshold, cfg.edge.high_threshold = low, high
    sample = Sample(key="k", source="s", ref=SourceRef("unused"))
    sample.image = np.repeat(np.asarray(gray, np.uint8)[:, :, None], 3, axis=2)
    CannyEdge(cfg)([sample])
    assert sample.edge is not None
    assert sample.edge.shape == sample.image.shape and sample.edge.dtype == np.uint8
    assert (sample.edge == sample.edge[:, :, :1]).all()  # RGB: three equal channels
    return sample.edge[:, :, 0] > 0


def test_black_square_on_white_gives_its_border():
    gray = np.full((32, 32), 255)
    gray[10:20, 10:20] = 0
    found = edges(gray)
    # A step lies between two pixels; Canny marks one of the two, so every edge is in the 2 px band around it.
    band = np.zeros((32, 32), bool)
    band[9:21, 9:21] = True
    band[11:19, 11:19] = False
    assert found.any() and not (found & ~band).any()
    for side in (found[9:11, 11:19].any(axis=0), found[19:21, 11:19].any(axis=0),
                 found[11:19, 9:11].any(axis=1), found[11:19, 19:21].any(axis=1)):
        assert side.all()  # each side traced along its whole length


def test_high_threshold():
    # A vertical step of d grey levels has Sobel magnitude 4d: 160 is under the high threshold 200, 240 above.
    step40, step60 = np.full((32, 32), 255), np.full((32, 32), 255)
    step40[:, 16:], step60[:, 16:] = 215, 195
    assert not edges(step40).any()
    assert edges(step60)[:, 15:17].any(axis=1).all()
    assert edges(step40, low=50, high=150)[:, 15:17].any(axis=1).all()


def test_low_threshold_continues_a_strong_edge():
    # Top half a strong step (240), bottom half a weak one (120): hysteresis follows it down while 120 ≥ low.
    gray = np.full((40, 32), 255)
    gray[:20, 16:], gray[20:, 16:] = 195, 225
    assert edges(gray)[25:, 15:17].any(axis=1).all()
    assert not edges(gray, low=130)[25:].any()


def test_rejected_sample_is_untouched():
    sample = Sample(key="k", source="s", ref=SourceRef("unused"))
    sample.reject_at("crops", "why")
    CannyEdge(BuildConfig())([sample])
    assert sample.reject == Reject("crops", "why") and sample.edge is None
