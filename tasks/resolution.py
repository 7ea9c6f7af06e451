"""Resolution filter: the paper keeps LAION-5B High-Res images of at least 1024 × 1024 (Appendix B).

It checks the photo's own size, read from its header by the decode stage (which decodes no photo this filter
rejects), not the working resolution the stages see."""

from __future__ import annotations

from dataclasses import dataclass, field

from storage.sample import Sample
from tasks.base import Stage
from tasks.config import ResolutionSection


@dataclass
class ResolutionFilter(Stage):
    name = "resolution"
    uses_model = False
    resolution: ResolutionSection = field(default_factory=ResolutionSection)

    def process(self, samples: list[Sample]) -> None:
        min_side = self.resolution.min_side
        for sample in samples:
            width, height = sample.photo_size()
            shorter = min(height, width)
            if shorter < min_side:
                reason = f"{width}×{height} px: shorter side {shorter} < resolution.min_side={min_side}"
                sample.reject_at(self.name, reason)
