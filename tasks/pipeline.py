"""The stage order, and the plain in-process loop over it. On Ray, `tasks/unit.py` runs the CPU stages in each
unit's task and `tasks/actors.py` the model stages on shared actor pools."""

from __future__ import annotations

from collections.abc import Iterator

from storage.sample import Sample
from tasks.base import Stage
from tasks.box_filters import BoxFilters
from tasks.boxes import Boxes
from tasks.caption import Caption
from tasks.config import BuildConfig
from tasks.crops import SubjectCrops
from tasks.decode import Decode
from tasks.duplicates import Duplicates
from tasks.edges import CannyEdge
from tasks.features import ClipFeatures
from tasks.mask_filters import MaskFilters
from tasks.masks import Masks
from tasks.nouns import Nouns
from tasks.resolution import ResolutionFilter
from tasks.subjects import SelectSubjects
from tasks.white_background import WhiteBackgroundFilter

STAGES: tuple[type[Stage], ...] = (
    Decode,
    Duplicates,
    ResolutionFilter,
    WhiteBackgroundFilter,
    Caption,
    Nouns,
    Boxes,
    BoxFilters,
    Masks,
    MaskFilters,
    SelectSubjects,
    SubjectCrops,
    CannyEdge,
    ClipFeatures,
)
STAGE_NAMES = [s.name for s in STAGES]
MODEL_STAGES = [s.name for s in STAGES if s.uses_model]


def stage_fingerprints(cfg: BuildConfig, profile: str) -> dict[str, str]:
    """Each model stage's fingerprint (tasks/base.py), chained through every stage before it, CPU ones included: a
    changed threshold anywhere upstream makes a stage's kept outputs stale."""
    chain, fingerprints = "", {}
    for stage in STAGES:
        chain = stage.fingerprint(cfg, profile, chain)
        if stage.uses_model:
            fingerprints[stage.name] = chain
    return fingerprints


def build_stages(cfg: BuildConfig, profile: str) -> list[Stage]:
    """Every stage from its own parameters, set up in this process (the in-process loop, tests, benchmarks)."""
    return [stage.create(cfg, profile) for stage in STAGES]


def run_local(samples: list[Sample], stages: list[Stage], batch_size: int = 16) -> Iterator[Sample]:
    """The plain in-process loop: every stage over one batch, batch after batch."""
    for i in range(0, len(samples), batch_size):
        batch = samples[i : i + batch_size]
        for stage in stages:
            stage(batch)
        yield from batch


def stage_groups() -> list[list[type[Stage]]]:
    """Each model stage alone (it runs on its actor pool); runs of consecutive CPU stages together (they run in
    the unit's own task)."""
    groups: list[list[type[Stage]]] = []
    for stage in STAGES:
        if stage.uses_model or not groups or groups[-1][0].uses_model:
            groups.append([stage])
        else:
            groups[-1].append(stage)
    return groups
