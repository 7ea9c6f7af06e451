"""Resolution filter: the paper keeps LAION-5B High-Res images of at least 1024 × 1024 (Appendix B)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lambda_eclipse.required import required
from storage.sample import Sample
from tasks.base import Stage
from tasks.config import ResolutionConfig


@dataclass
class ResolutionFilter(Stage):
    name = "resolution"
    uses_model = False
    resolution: ResolutionConfig = field(default_factory=ResolutionConfig)

    def process(self, samples: list[Sample]) -> None:
        min_side = self.resolution.min_side
        for sample in samples:
            height, width = required(sample.image, "sample.image").shape[:2]
            shorter = min(height, width)
            if shorter < min_side:
                reason = f"{width}×{height} px: shorter side {shorter} < resolution.min_side={min_side}"
                sample.reject_at(self.name, reason)
