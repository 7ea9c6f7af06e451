"""Box geometry shared by the box and mask filters and the subject crops.

Boxes are (x0, y0, x1, y1) floats in pixels of the decoded image, as Grounding DINO gives them.
"""

from __future__ import annotations

import math

import numpy as np


def box_size(box: np.ndarray) -> tuple[float, float]:
    """Width and height; a box with swapped corners has size 0, never a negative one."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return max(0.0, x1 - x0), max(0.0, y1 - y0)


def box_area(box: np.ndarray) -> float:
    width, height = box_size(box)
    return width * height


def intersection_area(a: np.ndarray, b: np.ndarray) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return float(max(0.0, width) * max(0.0, height))


def containment(a: np.ndarray, b: np.ndarray) -> float:
    """Overlap / the smaller box's area: 1 when one box lies inside the other, whatever their sizes."""
    smaller = min(box_area(a), box_area(b))
    return intersection_area(a, b) / smaller if smaller > 0 else 0.0


def pixel_bounds(box: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """The box snapped to the nearest pixel edges and clipped to the image, at least 1 px each way.

    Mask ratios and crops count whole pixels, so both use the same pixels for the same box.
    """

    def snap(v: float, size: int) -> int:
        return min(max(math.floor(float(v) + 0.5), 0), size)

    x0, x1 = snap(box[0], width), snap(box[2], width)
    y0, y1 = snap(box[1], height), snap(box[3], height)
    x0, y0 = min(x0, width - 1), min(y0, height - 1)
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)
