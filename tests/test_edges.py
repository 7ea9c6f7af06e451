import dataclasses

import cv2
import numpy as np
import pytest
import torch

from generate.pipeline import Generator
from generate.prior_checkpoint import PriorCheckpoint
from lambda_eclipse.models.clip import load_clip
from storage.sample import Reject, Sample, SourceRef
from tasks.config import BuildConfig
from tasks.edges import CannyEdge, canny_rgb, edge_resolution


def edges(gray, low=100, high=200):
    cfg = BuildConfig()
    cfg.edge.low_threshold, cfg.edge.high_threshold = low, high
    cfg.edge.size = 0  # the image's own resolution: these tests draw steps pixel by pixel
    sample = Sample(key="k", source="s", ref=SourceRef("unused"))
    sample.image = np.repeat(np.asarray(gray, np.uint8)[:, :, None], 3, axis=2)
    CannyEdge.create(cfg)([sample])
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
    CannyEdge.create(BuildConfig())([sample])
    assert sample.reject == Reject("crops", "why") and sample.edge is None


def photo(size: int) -> np.ndarray:
    """A 256 px pattern of shapes enlarged ×(size / 256) by pixel repetition: the same photo at any multiple."""
    base = np.full((256, 256, 3), 235, np.uint8)
    cv2.circle(base, (90, 110), 50, (40, 90, 160), -1)
    cv2.rectangle(base, (150, 40), (230, 200), (200, 60, 30), -1)
    cv2.line(base, (10, 240), (250, 170), (20, 20, 20), 3)
    k = size // 256
    return np.repeat(np.repeat(base, k, axis=0), k, axis=1)


def stage_edge(image: np.ndarray, cfg: BuildConfig | None = None) -> np.ndarray:
    sample = Sample(key="k", source="s", ref=SourceRef("unused"), image=image)
    CannyEdge.create(cfg or BuildConfig())([sample])
    assert sample.edge is not None
    return sample.edge


def test_the_same_photo_at_1024_and_2048_gives_the_same_edge_map():
    small, large = stage_edge(photo(1024)), stage_edge(photo(2048))
    assert BuildConfig().edge.size == 512
    assert small.shape == large.shape == (512, 512, 3)
    assert (small > 0).sum() > 1000 and (small == large).all()
    # at their own resolutions (edge.size=0) the two maps differ in size and in line density
    own = BuildConfig()
    own.edge.size = 0
    assert stage_edge(photo(1024), own).shape == (1024, 1024, 3)
    assert stage_edge(photo(2048), own).shape == (2048, 2048, 3)


def test_the_shorter_side_is_resized_and_the_aspect_kept():
    assert edge_resolution(1024, 1536, 512) == (512, 768)
    assert edge_resolution(3000, 1000, 512) == (1536, 512)
    assert edge_resolution(300, 200, 512) == (768, 512)  # a small image is enlarged to the same scale
    assert edge_resolution(300, 200, 0) == (300, 200)
    assert canny_rgb(np.zeros((1024, 1536, 3), np.uint8), 100, 200, 512).shape == (512, 768, 3)
    with pytest.raises(ValueError, match=r"edge.size=-1: must be ≥ 0"):
        canny_rgb(np.zeros((8, 8, 3), np.uint8), 100, 200, -1)


def test_training_and_inference_compute_the_same_control_embedding(tmp_path):
    image = photo(1024)[:, :768]  # not square
    path = tmp_path / "layout.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    cfg = BuildConfig()
    clip = load_clip("tiny", cfg.models, torch.device("cpu"), torch.float32)
    generator = object.__new__(Generator)  # only its `control` is exercised: the CLIP and prior it holds, that method
    generator.clip = clip
    # a prior trained on this build: train-prior records the dataset's edge settings (dataset.json's config.edge)
    generator.checkpoint = PriorCheckpoint("prior", "prior", {}, "", edge=dataclasses.asdict(cfg.edge))
    trained = clip.encode_images([stage_edge(image, cfg)])[0]  # as the features stage embeds sample.edge
    np.testing.assert_array_equal(generator.control(str(path)), trained)
    assert stage_edge(image, cfg).shape == (683, 512, 3)
