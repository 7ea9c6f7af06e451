"""Subject crops: the subject alone on white, as a square image for the CLIP image encoder."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from lambda_eclipse.required import required
from storage.sample import Detection, Sample
from tasks.base import Stage
from tasks.config import SubjectsConfig
from tasks.geometry import pixel_bounds

WHITE = 255


def subject_crop(image: np.ndarray, det: Detection, size: int) -> np.ndarray:
    """Mask on white, cropped to the box, padded to a centred square with white, resized to size × size.

    Padding before resizing keeps the subject's aspect ratio.
    """
    x0, y0, x1, y1 = pixel_bounds(det.box, *image.shape[:2])
    crop = np.where(required(det.mask, "det.mask")[y0:y1, x0:x1, None], image[y0:y1, x0:x1], WHITE).astype(np.uint8)
    height, width = crop.shape[:2]
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    square = np.full((side, side, 3), WHITE, np.uint8)
    square[top : top + height, left : left + width] = crop
    # Area averaging when shrinking (no aliasing), bicubic when enlarging: OpenCV's recommended pair.
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(square, (size, size), interpolation=interpolation)


@dataclass
class SubjectCrops(Stage):
    name = "crops"
    uses_model = False
    subjects: SubjectsConfig = field(default_factory=SubjectsConfig)

    def process(self, samples: list[Sample]) -> None:
        size = self.subjects.crop_size
        for sample in samples:
            for det in sample.subjects:
                det.crop = subject_crop(required(sample.image, "sample.image"), det, size)
