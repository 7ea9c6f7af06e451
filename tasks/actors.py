"""build-dataset's model stages on Ray: one pool of actors per stage (lambda_eclipse.actor_pool), sized by the
cluster it runs on (tasks/placement.py) and kept so while the build runs.

Each actor loads its stage's model once and then serves batches from every work unit being built; pools are created
together, so the models load in parallel. While the build runs, `StagePools.tick` follows the cluster (its nodes are
read every few seconds): nodes that join get actors, actors lost with a node are replaced where they fit and the pools
shrink to what remains; every few shards `rebalance` moves actors toward the stage that measured slowest. An actor that
is no longer wanted leaves the handles that new units get at once, and is stopped once no running unit holds it. An
actor that dies (OOM, a killed process) is restarted by Ray and the call is retried on it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from functools import partial

from lambda_eclipse import metrics
from lambda_eclipse.actor_pool import ActorPool, Placement
from lambda_eclipse.errors import BuildError
from storage.sample import Sample
from tasks.base import Stage, set_up
from tasks.config import BuildConfig
from tasks.pipeline import STAGES
from tasks.placement import PoolPlan, StageDemand, plan_pools

NODE_POLL_SECONDS = 5.0  # how often `tick` reads the cluster's nodes (a control-store call: never once per unit)
PIXELS = ("image", "edge")  # fields an actor reads but never changes: shared through the object store


UNIT_SECONDS = 0.02  # a unit task's CPU seconds per sample before any is measured (tiny profile, 256² photos)


def demands(cfg: BuildConfig, measured: dict[str, float] | None = None) -> list[StageDemand]:
    """Each model stage's cost per sample (declared on its class; `measured` CPU seconds replace the declared ones)
    and its runtime.actors / runtime.gpus overrides (BuildConfig.check has checked them)."""
    gpus, actors = cfg.runtime.gpus, cfg.runtime.actors
    measured = measured or {}
    return [StageDemand(s.name, s.tflops, measured.get(s.name, s.cpu_seconds), s.cpus,
                        int(actors[s.name]) if s.name in actors else None, gpus.get(s.name))
            for s in STAGES if s.uses_model]


def alive_nodes() -> dict[str, dict[str, float]]:
    """The cluster's live nodes and their total resources, as Ray's control store has them now."""
    import ray

    return {n["NodeID"]: dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")}


def process_batch(stage: Stage, samples: list[Sample], pixels: list[dict]) -> list[Sample]:
    """A model stage's call on its actor (`ActorPool`'s `run`): pixels arrive as object-store references and are
    read zero-copy; only the fields the stage adds travel back."""
    import ray

    start = time.perf_counter()  # pipeline metrics: batch seconds, busy seconds (lambda_eclipse/metrics.py)
    for sample, refs in zip(samples, pixels, strict=True):
        for name, ref in refs.items():
            setattr(sample, name, ray.get(ref))
    step = stage.batch_size or len(samples)
    for i in range(0, len(samples), step):
        stage(samples[i : i + step])
    for sample, refs in zip(samples, pixels, strict=True):
        for name in refs:
            setattr(sample, name, None)  # the caller holds them; don't send them back
    metrics.batch_done(stage.name, len(samples), time.perf_counter() - start)
    return samples


@dataclass
class _Retired:
    stage: str
    index: int
    generation: int  # the first generation of handles without it


@dataclass
class StagePools:
    """The actor pools of every model stage; unit tasks get `handles()` and spread calls over each pool."""

    cfg: BuildConfig
    profile: str
    log: object = None
    measured: dict[str, float] = field(default_factory=dict)  # CPU seconds per sample, once shards report them
    unit_seconds: float = UNIT_SECONDS
    generation: int = 0  # bumped whenever the handles change
    retired: list[_Retired] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.nodes = alive_nodes()
        self.polled = time.monotonic()
        self.plan = self._plan()
        # What a unit task asks for stays what the first plan left beside the actors: a re-plan that gave units more
        # while the actors kept their sizes would leave every new unit waiting for CPUs that never free up.
        self.unit_cpus = self.plan.unit_cpus
        self.pools: dict[str, ActorPool] = {}
        try:
            for stage in (s for s in STAGES if s.uses_model):
                kinds = self.plan.pools[stage.name]
                if not kinds:
                    raise BuildError(f"the cluster ({len(self.nodes)} node(s)) has no room for a {stage.name} actor")
                # The stage object, built from its own parameters, travels to its actors and is set up there.
                pool = ActorPool(stage.name, partial(set_up, stage.from_config(self.cfg, self.profile)), kinds[0],
                                 self.log, start=False)
                for kind in kinds[1:]:
                    pool.add(kind)
                self.pools[stage.name] = pool
            # Every model loads at once; a model that cannot load fails the build here, before any unit starts.
            for pool in self.pools.values():
                pool.wait_ready()
        except BaseException:
            self.shutdown()
            raise

    def _plan(self) -> PoolPlan:
        return plan_pools(self.nodes, demands(self.cfg, self.measured), self.unit_seconds)

    @property
    def used_nodes(self) -> set[str]:
        return set().union(*(pool.nodes for pool in self.pools.values()))

    def describe(self) -> str:
        return self.plan.describe()

    def sizes(self) -> dict[str, int]:
        return {name: pool.size for name, pool in self.pools.items()}

    def handles(self) -> dict[str, list]:
        return {name: pool.handles() for name, pool in self.pools.items()}

    def serving(self) -> bool:
        """Every stage has an actor to serve a unit."""
        return all(pool.size for pool in self.pools.values())

    def unservable(self, waited: float) -> str:
        """Why no unit can run: the stages without an actor, and what is left of the cluster."""
        missing = [name for name, pool in self.pools.items() if not pool.size]
        total = {k: sum(n.get(k, 0) for n in self.nodes.values()) for k in ("CPU", "GPU")}
        return (f"no actor of {', '.join(missing)} could be placed in {waited:.0f} s on what is left of the cluster "
                f"({len(self.nodes)} node(s), {total['CPU']:g} CPUs, {total['GPU']:g} GPUs); add nodes, or lower "
                "runtime.actors / runtime.gpus")

    def units_in_flight(self) -> int:
        """Unit tasks to keep submitted: runtime.units_in_flight, else twice the slots the plan gives them (the
        second half waits in Ray's queue, so a slot never idles between two units)."""
        return self.cfg.runtime.units_in_flight or 2 * self.plan.unit_slots

    def describe_clip(self) -> dict:
        from tasks.features import describe_clip

        return self.pools["features"].call(describe_clip, doing="describing its CLIP model")

    def tick(self, oldest_generation: int | None) -> list[str]:
        """Follow the cluster: actors that finished loading join, actors on lost nodes leave, the pools are re-planned
        when nodes come or go, and retired actors that no running unit holds (`oldest_generation`: the oldest handles
        a running unit got) are stopped. Returns what changed, for the run log."""
        changes = []
        before = self.sizes()
        for pool in self.pools.values():
            pool.poll()
        if time.monotonic() - self.polled >= NODE_POLL_SECONDS:
            self.polled = time.monotonic()
            changes += self._follow(alive_nodes())
        if self.sizes() != before:
            self.generation += 1
        keep = []
        for r in self.retired:
            if oldest_generation is None or oldest_generation >= r.generation:
                self.pools[r.stage].remove(r.index)
            else:
                keep.append(r)
        self.retired = keep
        return changes

    def _follow(self, nodes: dict[str, dict[str, float]]) -> list[str]:
        """The cluster's nodes as they are now: the actors of lost nodes leave, and the pools are re-planned."""
        if set(nodes) == set(self.nodes):
            return []
        lost, joined = set(self.nodes) - set(nodes), set(nodes) - set(self.nodes)
        for pool in self.pools.values():
            pool.remove_on(lost)
        self.nodes = nodes
        what = ", ".join(f"{len(x)} node(s) {verb}" for x, verb in ((lost, "lost"), (joined, "joined")) if x)
        return [f"cluster changed ({what}; {len(nodes)} node(s) now): " + self._resize()]

    def predicted(self, measured: dict[str, float], unit_seconds: float) -> float:
        """Samples/s the placement predicts for the cluster as it is now with these measured costs (the pools stay)."""
        return plan_pools(self.nodes, demands(self.cfg, measured), unit_seconds).predicted

    def rebalance(self, measured: dict[str, float], unit_seconds: float) -> str | None:
        """Re-plan with measured CPU seconds per sample; a line for the run log when the pools change."""
        self.measured, self.unit_seconds = measured, unit_seconds
        before = self.sizes()
        summary = self._resize()
        return f"rebalanced from measured stage times: {summary}" if self.sizes() != before else None

    def _resize(self) -> str:
        """Re-plan for the nodes and costs as they are now; each node's actors of each stage are brought to the plan's
        count (new ones load in the background; surplus ones retire)."""
        self.plan = self._plan()
        changed = []
        for name, pool in self.pools.items():
            want: dict[str | None, list[Placement]] = {}
            for kind in self.plan.pools[name]:
                want.setdefault(kind.node, []).extend([replace(kind, actors=1)] * kind.actors)
            have: dict[str | None, list[int]] = {}
            for index, node in pool.on_node().items():
                have.setdefault(node, []).append(index)
            before = sum(len(v) for v in have.values())
            for node in set(want) | set(have):
                wanted, held = want.get(node, []), have.get(node, [])
                for kind in wanted[len(held):]:
                    pool.add(kind)
                for index in sorted(held)[len(wanted):]:  # the newest go first
                    if pool.retire(index):  # it serves: stopped once no running unit holds it
                        self.retired.append(_Retired(name, index, self.generation + 1))
                    else:  # still loading
                        pool.remove(index)
            after = self.plan.actors(name)
            if after != before:
                changed.append(f"{name} {before}→{after}")
        if changed:
            self.generation += 1
        return (", ".join(changed) or "pools unchanged") + f" ({self.plan.describe()})"

    def ask_autoscaler(self, units: int) -> dict:
        """Ask Ray's autoscaler for the nodes `units` unit tasks could use, up to runtime.max_nodes: bundles shaped
        like the largest node now, one node per `unit_slots` of its plan (an autoscaler adds nodes that fit them, up
        to its own max_workers; on a cluster without one this is a no-op). Returns what was asked."""
        from ray.autoscaler.sdk import request_resources

        largest = max(self.nodes.values(), key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)))
        shape = {k: v for k, v in largest.items() if k in ("CPU", "GPU") and v}
        per_node = max(1, plan_pools({"n": largest}, demands(self.cfg, self.measured), self.unit_seconds).unit_slots)
        nodes = math.ceil(units / per_node)
        if self.cfg.runtime.max_nodes:
            nodes = min(nodes, self.cfg.runtime.max_nodes)
        request_resources(bundles=[shape] * nodes)
        return {"nodes": nodes, "shape": shape}

    def shutdown(self) -> None:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[])  # release what the build asked for: an autoscaler may scale down again
        for pool in self.pools.values():
            pool.shutdown()
