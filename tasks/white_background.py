"""White-background filter: images whose white area exceeds a fraction are mostly background (Appendix B)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from lambda_eclipse.required import required
from storage.sample import Sample
from tasks.base import Stage
from tasks.config import WhiteBackgroundSection


def white_fraction(image: np.ndarray, threshold: float) -> float:
    """Fraction of pixels whose every channel exceeds `threshold` (in [0, 1]) of full scale.

    On the uint8 image in one pass (OpenCV's inRange: one uint8 value per pixel), without the full-size bool and
    float temporaries of `np.all(image > t, axis=-1).mean()`; a channel value v exceeds t·255 iff v ≥ ⌊t·255⌋ + 1.
    """
    if image.dtype != np.uint8 or image.ndim != 3:
        return float(np.all(image > threshold * 255, axis=-1).mean())
    low = math.floor(threshold * 255) + 1
    if low > 255:
        return 0.0
    inside = cv2.inRange(image, (max(low, 0),) * image.shape[2], (255,) * image.shape[2])
    return cv2.countNonZero(inside) / (image.shape[0] * image.shape[1])


@dataclass
class WhiteBackgroundFilter(Stage):
    name = "white_background"
    uses_model = False
    white_background: WhiteBackgroundSection = field(default_factory=WhiteBackgroundSection)

    def process(self, samples: list[Sample]) -> None:
        cfg = self.white_background
        for sample in samples:
            fraction = white_fraction(required(sample.image, "sample.image"), cfg.threshold)
            if fraction > cfg.max_fraction:
                sample.reject_at(
                    self.name,
                    f"white fraction {fraction:.4f} > white_background.max_fraction={cfg.max_fraction} "
                    f"(pixels with every channel > {cfg.threshold})",
                )
