"""Canny edge map of the target image, the λ-ECLIPSE prior's control input (as RGB for the CLIP encoder)."""

from __future__ import annotations

import cv2
import numpy as np

from lambda_eclipse.required import required
from lambda_eclipse.sample import Sample
from tasks.base import Stage


def canny_rgb(image: np.ndarray, low_threshold: int, high_threshold: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB → its Canny edge map as (H, W, 3) uint8 RGB; also the generate command's --canny input."""
    edges = cv2.Canny(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), low_threshold, high_threshold)
    return cv2.cvtColor(edges, cv2.COLOR_GRAY2RGB)


class CannyEdge(Stage):
    name = "edge"
    uses_model = False

    def process(self, samples: list[Sample]) -> None:
        cfg = self.cfg.edge
        for sample in samples:
            sample.edge = canny_rgb(required(sample.image, "sample.image"), cfg.low_threshold, cfg.high_threshold)
