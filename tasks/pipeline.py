"""The stage order, and the two ways to run it over a work unit: in-process, or as a Ray Data pipeline.

The Ray Data pipeline has one actor pool per model stage (each model loads once per actor, GPU fraction per
stage configurable) and runs consecutive CPU stages as fused Ray tasks; stages stream into each other.
Samples travel between stages pickled in one binary column: they hold ragged, nested data (boxes, masks,
crops) that Arrow columns would only re-encode as Python objects anyway.
"""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Iterator

import numpy as np

from lambda_eclipse.config import BuildConfig
from lambda_eclipse.sample import Sample
from lambda_eclipse.tasks.base import Stage
from lambda_eclipse.tasks.box_filters import BoxFilters
from lambda_eclipse.tasks.boxes import Boxes
from lambda_eclipse.tasks.caption import Caption
from lambda_eclipse.tasks.crops import SubjectCrops
from lambda_eclipse.tasks.decode import Decode
from lambda_eclipse.tasks.edges import CannyEdge
from lambda_eclipse.tasks.features import ClipFeatures
from lambda_eclipse.tasks.mask_filters import MaskFilters
from lambda_eclipse.tasks.masks import Masks
from lambda_eclipse.tasks.nouns import Nouns
from lambda_eclipse.tasks.resolution import ResolutionFilter
from lambda_eclipse.tasks.subjects import SelectSubjects
from lambda_eclipse.tasks.white_background import WhiteBackgroundFilter

STAGES: tuple[type[Stage], ...] = (
    Decode,
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


def build_stages(cfg: BuildConfig, profile: str) -> list[Stage]:
    return [stage(cfg, profile) for stage in STAGES]


def run_local(samples: list[Sample], stages: list[Stage], batch_size: int = 16) -> Iterator[Sample]:
    """The plain in-process loop: every stage over one batch, batch after batch."""
    for i in range(0, len(samples), batch_size):
        batch = samples[i : i + batch_size]
        for stage in stages:
            stage(batch)
        yield from batch


def _groups() -> list[list[type[Stage]]]:
    """Each model stage alone; runs of consecutive CPU stages together (one Ray task does them all)."""
    groups: list[list[type[Stage]]] = []
    for stage in STAGES:
        if stage.uses_model or not groups or groups[-1][0].uses_model:
            groups.append([stage])
        else:
            groups[-1].append(stage)
    return groups


def _apply(stages: list[Stage], batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    samples = [pickle.loads(b) for b in batch["sample"]]
    for stage in stages:
        stage(samples)
    return {"sample": np.array([pickle.dumps(s, protocol=5) for s in samples], dtype=object)}


class _ModelActor:
    """Ray Data actor: loads its stage's model once, then processes batches."""

    def __init__(self, stage: type[Stage], cfg: BuildConfig, profile: str, threads: int):
        import torch

        torch.set_num_threads(threads)
        self.stage = stage(cfg, profile)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _apply([self.stage], batch)


def _cpu_task(batch: dict[str, np.ndarray], stages: list[type[Stage]], cfg: BuildConfig, profile: str):
    return _apply([stage(cfg, profile) for stage in stages], batch)


def run_ray(samples: list[Sample], cfg: BuildConfig, profile: str) -> Iterator[Sample]:
    """Run the stages over `samples` as a streaming Ray Data pipeline; yields samples in input order."""
    import ray
    import ray.data

    if not samples:
        return
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # shards are reproducible row for row
    context.enable_progress_bars = False  # the flow reports progress itself
    cpus = ray.cluster_resources().get("CPU", os.cpu_count() or 1)
    # Logical CPU shares: every model actor and the CPU tasks must fit on the cluster at once, or the
    # streaming pipeline stalls waiting for an actor that can never be scheduled.
    share = min(1.0, cpus / (len(MODEL_STAGES) + 1))
    threads = max(1, int(cpus // len(MODEL_STAGES)))
    # Blocks as small as the smallest model batch: the first actors get work at once and every stage
    # streams, instead of one large block crossing the pipeline stage by stage.
    smallest = min(s.batch_size_for(cfg) for s in STAGES if s.uses_model)
    # Stages without a batch-size key (CPU stages, spaCy) take blocks as they come: a larger batch there
    # would make Ray bundle blocks into a few big ones and the stages would run one after another.

    ds = ray.data.from_items(
        [{"sample": pickle.dumps(s, protocol=5)} for s in samples],
        override_num_blocks=max(1, math.ceil(len(samples) / smallest)),
    )
    for group in _groups():
        if group[0].uses_model:
            stage = group[0]
            ds = ds.map_batches(
                _ModelActor,
                fn_constructor_kwargs={"stage": stage, "cfg": cfg, "profile": profile, "threads": threads},
                batch_size=stage.batch_size_for(cfg, smallest),
                compute=ray.data.ActorPoolStrategy(size=cfg.runtime.actors),
                num_cpus=share,
                num_gpus=cfg.runtime.gpus.get(stage.name, 0.0),
            )
        else:
            ds = ds.map_batches(
                _cpu_task,
                fn_kwargs={"stages": group, "cfg": cfg, "profile": profile},
                batch_size=min(s.batch_size_for(cfg, smallest) for s in group),
                num_cpus=share,
            )
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for blob in batch["sample"]:
            yield pickle.loads(blob)
