"""Box filters after Grounding DINO, in the paper's order (Appendix B; Subject-Diffusion's values).

First the image-level rules on all detected boxes (how many, how many of one noun), then the per-box rules,
which drop boxes and reject the image only when none is left.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from lambda_eclipse.required import required
from storage.sample import Detection, Sample
from tasks.base import Stage
from tasks.config import BoxesSection
from tasks.geometry import box_size


def box_problem(det: Detection, image_area: int, cfg: BoxesSection) -> str | None:
    """Why a box fails the per-box rules (all bounds exclusive), or None when it passes."""
    width, height = box_size(det.box)
    area_ratio = width * height / image_area
    if not cfg.min_area_ratio < area_ratio < cfg.max_area_ratio:
        return f"area ratio {area_ratio:.3f} not in ({cfg.min_area_ratio}, {cfg.max_area_ratio})"
    # The exclusive area bound above leaves only boxes of positive area, so the height is not 0.
    aspect = width / height
    if not cfg.min_aspect < aspect < cfg.max_aspect:
        return f"width/height {aspect:.3f} not in ({cfg.min_aspect}, {cfg.max_aspect})"
    if not det.logit > cfg.min_logit:
        return f"logit {det.logit:.3f} <= {cfg.min_logit}"
    return None


@dataclass
class BoxFilters(Stage):
    name = "box_filters"
    uses_model = False
    boxes: BoxesSection = field(default_factory=BoxesSection)

    def process(self, samples: list[Sample]) -> None:
        cfg = self.boxes
        for sample in samples:
            count = len(sample.detections)
            if not cfg.min_boxes <= count <= cfg.max_boxes:
                bounds = f"boxes.min_boxes..max_boxes={cfg.min_boxes}..{cfg.max_boxes}"
                sample.reject_at(self.name, f"{count} boxes, outside {bounds}")
                continue
            most = Counter(d.noun for d in sample.detections).most_common(1)
            if most and most[0][1] > cfg.max_identical:
                noun, same = most[0]
                sample.reject_at(self.name, f"{same} boxes of {noun!r} > boxes.max_identical={cfg.max_identical}")
                continue
            height, width = required(sample.image, "sample.image").shape[:2]
            problems = [box_problem(d, height * width, cfg) for d in sample.detections]
            kept = [d for d, problem in zip(sample.detections, problems) if problem is None]
            if not kept:
                sample.reject_at(self.name, "no box passes the per-box filters: " + "; ".join(p for p in problems if p))
                continue
            sample.detections = kept
