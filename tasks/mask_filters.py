"""Mask filters after SAM: boxes whose mask fills too little of them, then boxes duplicated by a better one."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lambda_eclipse.required import required
from storage.sample import Detection, Sample
from tasks.base import Stage
from tasks.config import MasksSection
from tasks.geometry import containment, pixel_bounds


def mask_ratio(det: Detection) -> float:
    """Mask pixels inside the box / the box's pixels: low when SAM found no object filling the box."""
    mask = required(det.mask, "det.mask")
    x0, y0, x1, y1 = pixel_bounds(det.box, *mask.shape)
    region = mask[y0:y1, x0:x1]
    return np.count_nonzero(region) / region.size


@dataclass
class MaskFilters(Stage):
    name = "mask_filters"
    uses_model = False
    masks: MasksSection = field(default_factory=MasksSection)

    def process(self, samples: list[Sample]) -> None:
        cfg = self.masks
        for sample in samples:
            for det in sample.detections:
                det.mask_ratio = mask_ratio(det)
            filled = [d for d in sample.detections if required(d.mask_ratio, "det.mask_ratio") >= cfg.min_mask_ratio]
            # Best first, so that of two boxes around the same object the higher-logit one survives.
            kept: list[Detection] = []
            for det in sorted(filled, key=lambda d: d.logit, reverse=True):
                if all(containment(det.box, k.box) <= cfg.max_containment for k in kept):
                    kept.append(det)
            if not kept:
                ratios = ", ".join(f"{d.mask_ratio:.2f}" for d in sample.detections)
                reason = f"no box left: mask/box ratios [{ratios}] < masks.min_mask_ratio={cfg.min_mask_ratio}"
                sample.reject_at(self.name, reason)
                continue
            sample.detections = kept
