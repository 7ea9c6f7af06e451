"""build-dataset's executor: how a plan's units run on the cluster, apart from the stages (tasks/*.py) and from the
flow that plans and publishes (flows/build_dataset.py), as NeMo Curator keeps its executors apart from its stages.

`BuildExecutor` starts the model stages' actor pools (tasks/actors.py), keeps enough unit tasks (tasks/unit.py)
submitted that every slot the placement gives them stays busy, and hands each finished unit's stats to the caller.
A failing unit is tried again with backoff and recorded in `DIR/failed/` when every try failed; a unit that lost its
worker, node or actors is run again with the pools as they are now; the pools follow the cluster (`StagePools.tick`,
its nodes polled every few seconds) and are rebalanced from running sums of the measured stage costs.

Its work per finished unit is constant: no list of finished units is kept, and the cluster's state is read on a
clock, not per unit. `shard_totals` sums the stats of shards built before, in chunks, on the workers.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lambda_eclipse.errors import BuildError
from storage.build_totals import BuildTotals
from storage.fs import Location
from storage.layout import clear_failure, failed_units, failure_path, read_json, record_failure, shard_paths
from storage.sources import WorkUnit
from tasks.plan import BuildPlan

RETRY_BACKOFF = 1.0  # seconds before a failed unit's second try, doubled for each try after it (at most a minute)
INTERRUPTIONS = 10  # times a unit is run again after losing its worker, node or actors, before that counts as failing
TOTALS_CHUNK = 1000  # shards whose stats one worker task sums (`shard_totals`)


def interrupted(exc: BaseException) -> bool:
    """A unit that lost its worker, node or actors (the cluster's doing) rather than failed on its own inputs."""
    import ray.exceptions as rx

    from tasks.unit import ActorsGone

    cause = exc.cause if isinstance(exc, rx.RayTaskError) else exc
    system = (rx.WorkerCrashedError, rx.NodeDiedError, rx.ObjectLostError, rx.OwnerDiedError, rx.RayActorError,
              rx.ActorUnavailableError, rx.LocalRayletDiedError, ActorsGone)
    return isinstance(cause, system) or isinstance(exc, system)


def failure_reason(exc: BaseException) -> tuple[str, str]:
    """The one-line reason of a unit's failure, and the node it ran on."""
    import ray.exceptions as rx

    from tasks.unit import UnitFailed

    cause = exc.cause if isinstance(exc, rx.RayTaskError) else exc
    if isinstance(cause, UnitFailed):
        return str(cause), cause.node
    text = str(cause).strip()
    return (text.splitlines()[-1] if text else type(cause).__name__), ""


def stage_costs(totals: BuildTotals) -> tuple[dict[str, float], float]:
    """From shards' running totals: seconds per sample of each model stage (per sample that reached it), and of a
    unit's own work (every other stage), as the placement takes them."""
    from tasks.pipeline import MODEL_STAGES

    per = totals.seconds_per_sample()
    unit = sum(v for k, v in per.items() if k not in MODEL_STAGES)
    return {k: v for k, v in per.items() if k in MODEL_STAGES and v > 0}, unit


@dataclass
class Outcome:
    failed: list[dict]  # the failure records of units that failed every try (also in DIR/failed/)
    finished: bool  # False: stopped early at runtime.max_failed_units


class BuildExecutor:
    """Runs a plan's units: `with BuildExecutor(plan, log) as ex: ex.run(meta, on_done)`. Entering starts the
    model pools (every model loads at once; one that cannot load fails here, before any unit); leaving stops them."""

    def __init__(self, plan: BuildPlan, log):
        self.plan, self.log = plan, log
        self.nodes: set[str] = set()  # Ray nodes that ran this build's actors and unit tasks
        self._pools: Any = None

    def __enter__(self) -> BuildExecutor:
        from tasks.actors import StagePools

        pools = self._pools = StagePools(self.plan.cfg, self.plan.profile, self.log)
        self.nodes |= pools.used_nodes
        self.log.info("model actors ready on %d node(s) of %d: %s", len(pools.used_nodes), len(pools.nodes),
                      pools.describe())
        for note in pools.plan.notes:  # a node whose fixed pools leave no room (runtime.actors too high)
            self.log.warning("placement: %s", note)
        asked = pools.ask_autoscaler(len(self.plan.todo))
        self.log.info("asked the autoscaler for up to %d node(s) of %s (runtime.max_nodes caps it)", asked["nodes"],
                      asked["shape"])
        return self

    def __exit__(self, *exc) -> None:
        self._pools.shutdown()

    def describe_clip(self) -> dict:
        """The features stage's CLIP model (the dataset's meta records it)."""
        return self._pools.describe_clip()

    def sizes(self) -> dict[str, int]:
        """Serving actors per model stage."""
        return self._pools.sizes()

    def run(self, meta: dict, on_done: Callable[[WorkUnit, dict], None]) -> Outcome:
        """Build every unit of the plan's todo; `on_done(unit, stats)` as each finishes."""
        import ray

        from tasks.unit import build_unit

        plan, pools, log = self.plan, self._pools, self.log
        r = plan.cfg.runtime
        limit = r.max_failed_units or max(1, math.ceil(0.01 * len(plan.todo)))
        # What a unit task asks for is fixed for the build (StagePools.unit_cpus): its options are made once.
        task = ray.remote(max_retries=0, num_cpus=pools.unit_cpus)(build_unit)
        cfg, shared_meta = ray.put(plan.cfg), ray.put(meta)  # serialised once, not with every unit (Ray passes values)
        earlier_failures = set(failed_units(plan.output))
        costs = BuildTotals()  # this run's shards: the measured stage costs
        queue: deque = deque(plan.todo)
        delayed: list[tuple[float, WorkUnit]] = []  # (not before, unit): failed units waiting for their next try
        running: dict = {}  # ref → (unit, generation of the handles it got)
        tries: Counter = Counter()
        lost: Counter = Counter()
        failed: list[dict] = []
        handles, generation, built = None, -1, 0
        waiting_since: float | None = None
        while queue or running or delayed:
            for line in pools.tick(min((g for _, g in running.values()), default=None)):
                log.warning("%s", line)
            now = time.monotonic()
            for item in [d for d in delayed if d[0] <= now]:
                delayed.remove(item)
                queue.appendleft(item[1])
            if pools.serving():
                waiting_since = None
                if generation != pools.generation:
                    handles, generation = ray.put(pools.handles()), pools.generation
                    self.nodes |= pools.used_nodes
                while handles is not None and queue and len(running) < pools.units_in_flight():
                    unit = queue.popleft()
                    ref = task.remote(unit, str(plan.output), cfg, plan.profile, shared_meta, handles,
                                      plan.reuse.get(unit.shard))
                    running[ref] = (unit, generation)
            elif queue:
                waiting_since = waiting_since or now
                if now - waiting_since > r.placement_timeout:
                    _cancel(running)
                    raise BuildError(pools.unservable(now - waiting_since))
            if not running:
                time.sleep(0.2)
                continue
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            if ready and len(running) > 1:  # and every other unit that finished meanwhile, in one pass
                ready, _ = ray.wait(list(running), num_returns=len(running), timeout=0)
            for ref in ready:
                unit, _ = running.pop(ref)
                try:
                    stats = ray.get(ref)
                except Exception as exc:  # noqa: BLE001  (classified: the cluster's doing, or the unit's)
                    reason, node = failure_reason(exc)
                    if interrupted(exc) and lost[unit.shard] < INTERRUPTIONS:
                        lost[unit.shard] += 1
                        log.warning("shard %05d lost its worker, node or actors (%s): building it again", unit.shard,
                                    reason)
                        queue.appendleft(unit)
                        continue
                    tries[unit.shard] += 1
                    if tries[unit.shard] <= r.unit_retries:
                        wait = min(60.0, RETRY_BACKOFF * 2 ** (tries[unit.shard] - 1))
                        log.warning("shard %05d (%s) failed, try %d of %d: %s; again in %g s", unit.shard,
                                    unit.description, tries[unit.shard], r.unit_retries + 1, reason, wait)
                        delayed.append((now + wait, unit))
                        continue
                    failed.append(self._record_failure(unit, reason, node, tries[unit.shard]))
                    if len(failed) >= limit and (queue or delayed or running):
                        _cancel(running)  # a systematic error must not burn the cluster
                        return Outcome(failed, finished=False)
                    continue
                tries.pop(unit.shard, None)
                lost.pop(unit.shard, None)
                self.nodes.add(stats["node"])
                if unit.shard in earlier_failures:
                    clear_failure(plan.output, unit.shard)
                on_done(unit, stats)
                built += 1
                costs.add(stats)
                if r.rebalance_every and built % r.rebalance_every == 0:
                    line = pools.rebalance(*stage_costs(costs))
                    if line:
                        log.info("%s", line)
        if built:  # how the placement's model compares with what the build measured (docs/build-dataset.md)
            log.info("placement: %.3g samples/s predicted from the stage costs this run measured (%.3g by the plan "
                     "it ran)", pools.predicted(*stage_costs(costs)), pools.plan.predicted)
        return Outcome(failed, finished=True)

    def _record_failure(self, unit: WorkUnit, reason: str, node: str, attempts: int) -> dict:
        record = {"shard": unit.shard, "description": unit.description, "error": reason, "attempts": attempts,
                  "node": node, "time": datetime.now(UTC).isoformat(timespec="seconds")}
        record_failure(self.plan.output, unit.shard, record)
        self.log.error("shard %05d (%s) failed after %d tries: %s; recorded in %s", unit.shard, unit.description,
                       attempts, reason, failure_path(self.plan.output, unit.shard))
        return record


def _cancel(running: dict) -> None:
    import ray

    for ref in running:
        ray.cancel(ref, force=True)


def _chunk_totals(root: Location, shards: list[int]) -> BuildTotals:
    totals = BuildTotals()
    for shard in shards:
        totals.add(read_json(shard_paths(root, shard)["stats"]))
    return totals


def shard_totals(root: Location, shards: list[int]) -> BuildTotals:
    """The totals of complete shards from their stats files: chunks of TOTALS_CHUNK summed by Ray tasks in parallel
    (a single chunk here, where Ray may not run)."""
    chunks = [shards[i:i + TOTALS_CHUNK] for i in range(0, len(shards), TOTALS_CHUNK)]
    totals = BuildTotals()
    if len(chunks) <= 1:
        for chunk in chunks:
            totals.merge(_chunk_totals(root, chunk))
        return totals
    import ray

    task = ray.remote(num_cpus=0.25)(_chunk_totals)
    for part in ray.get([task.remote(root, chunk) for chunk in chunks]):
        totals.merge(part)
    return totals
