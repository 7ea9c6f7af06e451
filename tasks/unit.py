"""One work unit → one shard, on a Ray worker: read the inputs, run the CPU stages here and the model stages on
the shared actor pools, write the shard; only the shard's stats (kilobytes) go back to the flow.

Batches of the unit move through the stages as a small software pipeline: while one batch waits on a model
actor, the next is decoded and filtered here, so a unit keeps several actors busy. Pixels are put in the
object store once and every actor reads them zero-copy; only the fields a stage adds travel back. Rows are
written in input order, so a shard is the same whatever the timing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayError

from lambda_eclipse import metrics
from storage.kept import KeptOutputs, ReuseSource
from storage.sample import Sample
from storage.schema import feature_schema
from storage.shard_writer import ShardWriter
from storage.sources import WorkUnit
from tasks.actors import PIXELS, process_batch
from tasks.base import Stage
from tasks.config import BuildConfig
from tasks.copies import read_copies
from tasks.pipeline import STAGE_NAMES, STAGES, stage_fingerprints, stage_groups

WINDOW = 3  # batches of one unit in flight at once
# Fields the unit keeps for the shard and no model stage reads: never sent to an actor (the photo's bytes, ~1-3 MB)
UNIT_ONLY = ("jpeg",)


class ActorsGone(RuntimeError):
    """Every actor of a stage this unit was given has died (a lost node): the unit is run again with the pools as
    they are now, which is no failure of its own."""


class UnitFailed(RuntimeError):
    """A unit's failure, with the node it ran on (for its failure record)."""

    def __init__(self, message: str, node: str):
        super().__init__(message)
        self.node = node

    def __reduce__(self):
        return UnitFailed, (str(self), self.node)


@dataclass
class _Batch:
    samples: list[Sample]
    group: int = 0  # the next stage group to run
    ref: ray.ObjectRef | None = None  # the model call it waits on
    actor: object = None  # the actor serving that call
    live: list[int] = field(default_factory=list)  # indices of the samples sent with that call
    pixels: dict[str, dict[str, ray.ObjectRef]] = field(default_factory=dict)  # key → field → shared pixels


class UnitRunner:
    def __init__(self, cfg: BuildConfig, profile: str, pools: dict[str, list], kept: KeptOutputs | None = None):
        """`kept`: an earlier build's model outputs for this unit's inputs (--reuse): a model stage runs only on the
        inputs it has none for."""
        self.cfg = cfg
        self.pools = {name: list(actors) for name, actors in pools.items()}  # this unit's copy: dead actors leave it
        self.groups = stage_groups()
        self.cpu_stages: dict[str, Stage] = {s.name: s.create(cfg, profile) for s in STAGES if not s.uses_model}
        self.kept = kept
        # model stages without their model: what puts kept outputs back (Stage.restore)
        self.restorers: dict[str, Stage] = {s.name: s.from_config(cfg, profile) for s in STAGES if s.uses_model}
        self.batch = max(s.batch_size_for(cfg, 1) for s in STAGES if s.uses_model)
        self._turn = 0

    def _advance(self, batch: _Batch) -> None:
        """Run CPU stage groups here until the batch needs a model stage (submitted) or is done."""
        while batch.group < len(self.groups):
            group = self.groups[batch.group]
            batch.group += 1
            if not group[0].uses_model:
                for stage in group:
                    self.cpu_stages[stage.name](batch.samples)
                continue
            live = [i for i, s in enumerate(batch.samples) if s.accepted]
            if self.kept:
                live = self._restore(group[0].name, batch.samples, live)
            if not live:
                continue
            pool = self.pools[group[0].name]
            if not pool:
                raise ActorsGone(f"every {group[0].name} actor this unit was given has died")
            actor = pool[self._turn % len(pool)]
            self._turn += 1
            sent, refs = [], []
            for i in live:
                sample = batch.samples[i]
                shared = batch.pixels.setdefault(sample.key, {})
                for name in PIXELS:
                    value = getattr(sample, name)
                    if value is not None and name not in shared:
                        shared[name] = ray.put(value)
                refs.append({k: v for k, v in shared.items() if getattr(sample, k) is not None})
                light = _without(sample, PIXELS + UNIT_ONLY)
                sent.append(light)
            batch.live, batch.actor = live, actor
            batch.ref = actor.run.remote(process_batch, sent, refs)
            return

    def _restore(self, stage: str, samples: list[Sample], live: list[int]) -> list[int]:
        """Put the kept outputs of `stage` back on the live samples that have them; the rest (returned) need it."""
        assert self.kept is not None
        found: dict[int, dict] = {}
        for i in live:
            record = self.kept.get(samples[i].content, stage)
            if record is not None:
                found[i] = record
        if found:
            self.restorers[stage].restore([samples[i] for i in found], list(found.values()))
        return [i for i in live if i not in found]

    def _receive(self, batch: _Batch, results: list[Sample]) -> None:
        for i, result in zip(batch.live, results, strict=True):
            mine = batch.samples[i]
            if result.accepted:
                for name in PIXELS + UNIT_ONLY:
                    setattr(result, name, getattr(mine, name))
            batch.samples[i] = result
        batch.ref, batch.live, batch.actor = None, [], None

    def run(self, samples: Iterator[Sample]) -> Iterator[Sample]:
        """Every sample of `samples`, processed, in input order."""
        active: list[_Batch] = []
        source = iter(samples)
        exhausted = False
        while active or not exhausted:
            while not exhausted and len(active) < WINDOW:
                chunk = list(islice(source, self.batch))
                if not chunk:
                    exhausted = True
                    break
                active.append(_Batch(chunk))
                self._advance(active[-1])
            waiting = {b.ref: b for b in active if b.ref is not None}
            if waiting:
                (ready,), _ = ray.wait(list(waiting), num_returns=1)
                batch = waiting[ready]
                try:
                    results = ray.get(ready)
                except (RayActorError, ActorUnavailableError):
                    # Its actor is gone for good (a lost node, a pool that shrank): the same call on another one.
                    stage = self.groups[batch.group - 1][0].name
                    self.pools[stage] = [a for a in self.pools[stage] if a != batch.actor]
                    batch.group -= 1
                    batch.ref = None
                    self._advance(batch)
                    continue
                self._receive(batch, results)
                self._advance(batch)
            while active and active[0].ref is None and active[0].group >= len(self.groups):
                done = active.pop(0)
                done.pixels.clear()
                yield from done.samples


def _without(sample: Sample, names: tuple[str, ...]) -> Sample:
    """A shallow copy of `sample` with the named array fields left out (they travel as references)."""
    copy = Sample.__new__(Sample)
    copy.__dict__.update(sample.__dict__)
    for name in names:
        setattr(copy, name, None)
    return copy


def write_shard(unit: WorkUnit, root: str, cfg: BuildConfig, meta: dict, processed: Iterator[Sample],
                fingerprints: dict[str, str]) -> dict:
    """Write shard `unit.shard` under `root` from the processed samples; returns its stats. Nothing that looks
    complete is left on failure (the stats marker is written last)."""
    schema = feature_schema(meta["embed_dim"], meta["text_width"])
    writer = ShardWriter(root, unit.shard, schema, cfg.split.train_fraction, STAGE_NAMES, fingerprints)
    try:
        for sample in processed:
            writer.add(sample)
        if unit.images is not None and writer.inputs != unit.images:
            raise RuntimeError(f"shard {unit.shard}: {unit.images} inputs but {writer.inputs} results")
        return writer.close({"description": unit.description, "fingerprint": unit.fingerprint()})
    except BaseException:
        writer.abort()
        raise


def _with_copies(samples: Iterator[Sample], copies: dict[str, str]) -> Iterator[Sample]:
    """The samples, each told which input it copies (the duplicates pass's decision), if any."""
    for sample in samples:
        sample.copy_of = copies.get(sample.key)
        yield sample


def build_unit(unit: WorkUnit, root: str, cfg: BuildConfig, profile: str, meta: dict, pools: dict[str, list],
               reuse: ReuseSource | None) -> dict:
    """A Ray task: read, process and write one unit's shard on this worker; returns its stats. `reuse`: the earlier
    dataset's shards whose kept model outputs may serve this unit's inputs (--reuse)."""
    node = ray.get_runtime_context().get_node_id()
    try:
        with metrics.unit_in_flight():  # pipeline metrics (lambda_eclipse/metrics.py): exact, from the shard's stats
            fingerprints = stage_fingerprints(cfg, profile)
            kept = KeptOutputs.load(reuse, fingerprints) if reuse else None
            runner = UnitRunner(cfg, profile, pools, kept)
            copies = read_copies(root, unit.shard) if cfg.duplicates.max_distance >= 0 else {}
            samples = runner.run(_with_copies(unit.iter_samples(cfg.input.extensions), copies))
            stats = write_shard(unit, root, cfg, meta, samples, fingerprints)
    except (ActorsGone, RayError):
        raise  # the cluster's, not the unit's: the flow runs it again
    except Exception as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise UnitFailed(f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__, node) from exc
    metrics.shard_done(stats, unit.bytes)
    return stats | {"node": node, "pid": os.getpid()}  # where it ran
