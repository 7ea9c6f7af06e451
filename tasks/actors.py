"""build-dataset's model stages on Ray: one pool of actors per stage (lambda_eclipse.actor_pool), sized and placed
from what the stage declares.

Each actor loads its stage's model once and then serves batches from every work unit being built; pools are
created together, so the models load in parallel, and are ready before the first unit starts. An actor that
dies (OOM, a killed process, a lost node) is restarted by Ray and the call is retried on it.
"""

from __future__ import annotations

import math
import os
import time
from functools import partial

from lambda_eclipse import metrics
from lambda_eclipse.actor_pool import ActorPool, Placement, floor_cpus
from lambda_eclipse.errors import UserError
from storage.sample import Sample
from tasks.base import Stage, set_up
from tasks.config import BuildConfig
from tasks.pipeline import MODEL_STAGES, STAGES

PIXELS = ("image", "edge")  # fields an actor reads but never changes: shared through the object store


def _checked(mapping: dict, what: str) -> dict:
    unknown = sorted(set(mapping) - set(MODEL_STAGES))
    if unknown:
        raise UserError(
            f"runtime.{what}: unknown stage {', '.join(unknown)}; model stages are {', '.join(MODEL_STAGES)}"
        )
    bad = [f"{k}={v}" for k, v in mapping.items() if v < 0 or (what == "actors" and (v < 1 or v != int(v)))]
    if bad:
        need = "a whole number of at least 1" if what == "actors" else "a fraction of at least 0"
        raise UserError(f"runtime.{what}: {', '.join(bad)} must be {need}")
    return mapping


def check_runtime(cfg: BuildConfig) -> None:
    """The runtime overrides name model stages and sane values (checked before Ray starts)."""
    from lambda_eclipse.device import check_device, check_dtype

    check_device("runtime.device", cfg.runtime.device)
    check_dtype("runtime.dtype", cfg.runtime.dtype)
    check_dtype("features.dtype", cfg.features.dtype)
    _checked(cfg.runtime.gpus, "gpus")
    _checked(cfg.runtime.actors, "actors")
    if cfg.runtime.units_in_flight < 0:
        raise UserError(f"runtime.units_in_flight must be 0 (automatic) or more, got {cfg.runtime.units_in_flight}")


def _scale(cluster: dict[str, float], wanted: dict[str, tuple[float, float, int]]) -> float:
    total = sum(c * n for c, _, n in wanted.values()) + UNIT_CPUS
    return min(1.0, cluster.get("CPU", os.cpu_count() or 1) / total)


def _wanted(cfg: BuildConfig, cluster: dict[str, float]) -> dict[str, tuple[float, float, int]]:
    gpus = _checked(cfg.runtime.gpus, "gpus")
    actors = _checked(cfg.runtime.actors, "actors")
    has_gpus = cluster.get("GPU", 0) > 0
    return {
        s.name: (s.cpus, gpus.get(s.name, s.gpus if has_gpus else 0.0), int(actors.get(s.name, s.actors)))
        for s in STAGES
        if s.uses_model
    }


def placements(cfg: BuildConfig, cluster: dict[str, float]) -> dict[str, Placement]:
    """Per model stage: the declared resources with the runtime overrides, CPUs scaled down (never the GPUs) so
    that every actor and one unit task fit on the cluster at once; otherwise the build would wait forever for an
    actor that cannot be placed."""
    wanted = _wanted(cfg, cluster)
    scale = _scale(cluster, wanted)
    return {
        name: Placement(cpus=floor_cpus(c * scale), gpus=g, actors=n, threads=max(1, math.floor(c * scale)))
        for name, (c, g, n) in wanted.items()
    }


UNIT_CPUS = 1.0  # a unit task before scaling: decode, CPU filters, crops, Canny, shard encoding


def unit_cpus(cfg: BuildConfig, cluster: dict[str, float]) -> float:
    """A unit task's CPUs: scaled like the actors', so that on a small cluster one fits beside them."""
    return floor_cpus(UNIT_CPUS * _scale(cluster, _wanted(cfg, cluster)))


def process_batch(stage: Stage, samples: list[Sample], pixels: list[dict]) -> list[Sample]:
    """A model stage's call on its actor (`ActorPool`'s `run`): pixels arrive as object-store references and are
    read zero-copy; only the fields the stage adds travel back."""
    import ray

    start = time.perf_counter()  # pipeline metrics: batch seconds, busy seconds (lambda_eclipse/metrics.py)
    for sample, refs in zip(samples, pixels, strict=True):
        for field, ref in refs.items():
            setattr(sample, field, ray.get(ref))
    step = stage.batch_size or len(samples)
    for i in range(0, len(samples), step):
        stage(samples[i : i + step])
    for sample, refs in zip(samples, pixels, strict=True):
        for field in refs:
            setattr(sample, field, None)  # the caller holds them; don't send them back
    metrics.batch_done(stage.name, len(samples), time.perf_counter() - start)
    return samples


class StagePools:
    """The actor pools of every model stage (lambda_eclipse.actor_pool); unit tasks get their handles and spread
    calls over each pool."""

    def __init__(self, cfg: BuildConfig, profile: str, log=None):
        from lambda_eclipse.ray_session import cluster_resources

        self.placements = placements(cfg, cluster_resources())
        self.pools: dict[str, ActorPool] = {}
        try:
            for stage in (s for s in STAGES if s.uses_model):
                # The stage object, built from its own parameters, travels to its actors and is set up there.
                self.pools[stage.name] = ActorPool(stage.name, partial(set_up, stage.from_config(cfg, profile)),
                                                   self.placements[stage.name], log, start=False)
            # Every model loads at once; a model that cannot load fails the build here, before any unit starts.
            for pool in self.pools.values():
                pool.wait_ready()
        except BaseException:
            self.shutdown()
            raise
        self.nodes = set().union(*(pool.nodes for pool in self.pools.values()))

    def describe(self) -> str:
        return ", ".join(
            f"{name} {p.actors}×({p.cpus} CPU, {p.gpus} GPU, {p.threads} threads)"
            for name, p in self.placements.items()
        )

    def handles(self) -> dict[str, list]:
        return {name: pool.actors for name, pool in self.pools.items()}

    def describe_clip(self) -> dict:
        from tasks.features import describe_clip

        return self.pools["features"].call(describe_clip, doing="describing its CLIP model")

    def shutdown(self) -> None:
        for pool in self.pools.values():
            pool.shutdown()
