"""Duplicates stage: rejects an input that copies another, right after decode, before any filter or model runs on it.
Which inputs are copies, and of what, was decided before the units ran (tasks/copies.py); the unit hands each sample
its decision (`Sample.copy_of`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from storage.sample import Sample
from tasks.base import Stage
from tasks.config import DuplicatesSection


@dataclass
class Duplicates(Stage):
    name = "duplicates"
    uses_model = False
    duplicates: DuplicatesSection = field(default_factory=DuplicatesSection)
    # A kept photo's later outputs do not depend on which others were its copies: no key in the fingerprint chain.
    depends_on = ()

    def process(self, samples: list[Sample]) -> None:
        for sample in samples:
            if sample.copy_of is not None:
                sample.reject_at(self.name, f"copy of {sample.copy_of}")
