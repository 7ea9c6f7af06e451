"""Subject selection: one subject per distinct noun, its best box; images with too many subjects are excluded."""

from __future__ import annotations

from dataclasses import dataclass, field

from storage.sample import Detection, Sample
from tasks.base import Stage
from tasks.config import SubjectsSection


@dataclass
class SelectSubjects(Stage):
    name = "subjects"
    uses_model = False
    subjects: SubjectsSection = field(default_factory=SubjectsSection)

    def process(self, samples: list[Sample]) -> None:
        cfg = self.subjects
        for sample in samples:
            best: dict[str, Detection] = {}
            for det in sample.detections:
                if det.noun not in best or det.logit > best[det.noun].logit:
                    best[det.noun] = det
            if not cfg.min_subjects <= len(best) <= cfg.max_subjects:
                bounds = f"subjects.min_subjects..max_subjects={cfg.min_subjects}..{cfg.max_subjects}"
                sample.reject_at(self.name, f"{len(best)} subjects, outside {bounds}")
                continue
            sample.subjects = sorted(best.values(), key=lambda d: d.logit, reverse=True)
