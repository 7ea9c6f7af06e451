"""Canny edge map of the target image, the λ-ECLIPSE prior's control input (as RGB for the CLIP encoder)."""

from __future__ import annotations

import cv2

from lambda_eclipse.sample import Sample
from lambda_eclipse.tasks.base import Stage


class CannyEdge(Stage):
    name = "edge"
    uses_model = False

    def process(self, samples: list[Sample]) -> None:
        cfg = self.cfg.edge
        for sample in samples:
            gray = cv2.cvtColor(sample.image, cv2.COLOR_RGB2GRAY)
            edges = cv2.Canny(gray, cfg.low_threshold, cfg.high_threshold)
            sample.edge = cv2.cvtColor(edges, cv2.COLOR_GRAY2RGB)
