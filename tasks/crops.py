"""Subject crops: the subject alone on white, as a square image for the CLIP image encoder."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from lambda_eclipse.required import required
from storage.sample import Detection, Sample
from tasks.base import Stage
from tasks.config import SubjectsSection
from tasks.geometry import pixel_bounds

WHITE = 255


def subject_crop(image: np.ndarray, det: Detection, size: int) -> np.ndarray:
    """Mask on white, cropped to the box, padded to a centred square with white, resized to size × size.

    Padding before resizing keeps the subject's aspect ratio. On uint8 at the box's size, through OpenCV (a masked
    copy onto white, a constant border): no float or full-image temporaries.
    """
    mask = required(det.mask, "det.mask")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} and image {image.shape[:2]} differ in size")
    x0, y0, x1, y1 = pixel_bounds(det.box, *image.shape[:2])
    height, width = y1 - y0, x1 - x0
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    crop = np.full((height, width, 3), WHITE, np.uint8)
    inside = np.ascontiguousarray(mask[y0:y1, x0:x1]).view(np.uint8)  # bool as 0/1 bytes: OpenCV's mask
    crop = cv2.copyTo(np.ascontiguousarray(image[y0:y1, x0:x1]), inside, crop)
    square = cv2.copyMakeBorder(crop, top, side - height - top, left, side - width - left, cv2.BORDER_CONSTANT,
                                value=(WHITE, WHITE, WHITE))
    # Area averaging when shrinking (no aliasing), bicubic when enlarging: OpenCV's recommended pair.
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(square, (size, size), interpolation=interpolation)


@dataclass
class SubjectCrops(Stage):
    name = "crops"
    uses_model = False
    subjects: SubjectsSection = field(default_factory=SubjectsSection)

    def process(self, samples: list[Sample]) -> None:
        size = self.subjects.crop_size
        for sample in samples:
            for det in sample.subjects:
                det.crop = subject_crop(required(sample.image, "sample.image"), det, size)
