"""White-background filter: images whose white area exceeds a fraction are mostly background (Appendix B)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lambda_eclipse.required import required
from storage.sample import Sample
from tasks.base import Stage
from tasks.config import WhiteBackgroundConfig


def white_fraction(image: np.ndarray, threshold: float) -> float:
    """Fraction of pixels whose every channel exceeds `threshold` (in [0, 1]) of full scale."""
    return float(np.all(image > threshold * 255, axis=-1).mean())


@dataclass
class WhiteBackgroundFilter(Stage):
    name = "white_background"
    uses_model = False
    white_background: WhiteBackgroundConfig = field(default_factory=WhiteBackgroundConfig)

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
