"""Canny edge map of the target image, the λ-ECLIPSE prior's control input (as RGB for the CLIP encoder).

The map is computed at one fixed resolution, in training (this stage) and at inference (`generate --canny` with a prior
trained here repeats its dataset's `edge` settings): the image's shorter side is first resized to `edge.size` px (area
averaging).
Canny's lines are one pixel wide whatever the image size, so without it a 2048 px photo's map, shrunk to CLIP's
224 px, holds lines 2× fainter and finer detail than a 1024 px one's: the control embedding would measure the
photo's resolution. The paper does not say at which resolution it ran Canny; 512 px is Kandinsky 2.2's generation
size (the images the control should lay out) and keeps the lines visible at 224 px. The released checkpoint's own
inference runs Canny on the image at its own size, which generate does for it (generate/prior_checkpoint.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from lambda_eclipse.required import required
from storage.sample import Sample
from tasks.base import Stage
from tasks.config import EdgeSection


def edge_resolution(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) with the shorter side `size` and the aspect ratio kept; size 0 keeps (height, width)."""
    if size < 0:
        raise ValueError(f"edge.size={size}: must be ≥ 0 (the shorter side in px; 0: the image's own resolution)")
    if size == 0:
        return height, width
    scale = size / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def canny_rgb(image: np.ndarray, low_threshold: int, high_threshold: int, size: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB → its Canny edge map as (h, w, 3) uint8 RGB, h and w from `edge_resolution`."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    height, width = edge_resolution(gray.shape[0], gray.shape[1], size)
    if (height, width) != gray.shape[:2]:
        # area averaging when shrinking (no aliasing), bicubic when enlarging a small image
        shrink = height < gray.shape[0]
        gray = cv2.resize(gray, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    edges = cv2.Canny(gray, low_threshold, high_threshold)
    return cv2.cvtColor(edges, cv2.COLOR_GRAY2RGB)


@dataclass
class CannyEdge(Stage):
    name = "edge"
    uses_model = False
    edge: EdgeSection = field(default_factory=EdgeSection)

    def process(self, samples: list[Sample]) -> None:
        cfg = self.edge
        for sample in samples:
            image = required(sample.image, "sample.image")
            sample.edge = canny_rgb(image, cfg.low_threshold, cfg.high_threshold, cfg.size)
