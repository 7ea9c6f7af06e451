"""The one Ray actor pool: build-dataset's model stages, generate, interpolate and evaluate all run their models in it.

Each actor builds its models once (`build()`: a build stage, a Generator, an Evaluator) and then serves
`fn(models, *args)` calls. It asks Ray for its `Placement`: GPUs only where the cluster has them, CPUs rounded down so
that shares that fill a node exactly still fit on it. An actor that dies (a killed process, a lost node) is
restarted by Ray and the call retried on it; a model that fails to load keeps its exception, which `ready()` raises
with its type (an exception in an actor's constructor would reach the caller only as text).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from lambda_eclipse.errors import UserError, WorkerError, ray_error_reason

IN_FLIGHT = 2  # calls queued per actor by `map`: the next item is already there when one finishes
RESTARTS = 4  # an actor's restarts and a call's retries after its actor died


@dataclass
class Placement:
    """What each actor of a pool gets: Ray resources, torch threads, how many actors, and the node they are meant for
    (preferred, not required: Ray places them elsewhere if that node is gone)."""

    cpus: float
    gpus: float
    actors: int
    threads: int
    node: str | None = None


def floor_cpus(cpus: float) -> float:
    """Rounded down, so that shares that fill a node exactly still fit on it."""
    return math.floor(cpus * 10_000) / 10_000


def placement(gpus: float, cpus: float, actors: int, cluster: dict[str, float]) -> Placement:
    """What each of `actors` actors asks Ray for: `gpus` only where the cluster has GPUs; CPUs scaled down so that
    all of them fit (else Ray would wait forever for an actor it cannot place)."""
    cpu = floor_cpus(min(cpus, cluster.get("CPU", os.cpu_count() or 1) / actors))
    return Placement(cpus=cpu, gpus=gpus if cluster.get("GPU", 0) > 0 else 0.0, actors=actors,
                     threads=max(1, math.floor(cpu)))


def gpu_shortfall(stage: str, p: Placement, cluster: dict[str, float]) -> str | None:
    """A warning when the actors need more GPUs than the cluster has now (they would wait for an autoscaler)."""
    need, have = p.gpus * p.actors, cluster.get("GPU", 0)
    if need <= have:
        return None
    return (f"{stage}: {p.actors} actor(s) × {p.gpus:g} GPU need {need:g} GPUs, the cluster has {have:g} now: they "
            "wait until nodes with GPUs join (an autoscaler); otherwise lower the actors or runtime.gpus")


class ModelActor:
    """Builds its models once and runs `fn(models, *args)` calls."""

    def __init__(self, build: Callable[[], Any], threads: int, gpus: float):
        if not gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = ""  # an actor that asked for no GPU must not use one
        import torch

        torch.set_num_threads(threads)
        self.models, self.error = None, None
        try:
            self.models = build()
        except Exception as exc:  # noqa: BLE001  (raised again by ready(), with its type)
            self.error = exc

    def ready(self) -> dict:
        """Where the models run, once loaded: node, device, dtype."""
        import ray

        if self.error is not None:
            raise self.error
        device = getattr(self.models, "device", None)
        dtype = str(getattr(self.models, "dtype", "")).removeprefix("torch.")
        return {"node": ray.get_runtime_context().get_node_id(), "device": str(device), "dtype": dtype}

    def run(self, fn: Callable, *args):
        return fn(self.models, *args)


class ActorPool:
    """ModelActors of one stage, loaded in parallel; calls spread over those that are ready. The pool grows (`add`) and
    shrinks (`remove`) while it serves: a build resizes its pools to the cluster it has. `start=False` leaves waiting
    for the models to the caller (`wait_ready`, `poll`), so that several pools load at once."""

    def __init__(self, stage: str, build: Callable[[], Any], placement: Placement, log=None, start: bool = True):
        self.stage, self.build, self.log = stage, build, log
        self.placement = placement  # the first actors' (what `describe` shows)
        self.actors: list = []
        self._where: list[dict] = []  # per actor, once ready: node, device, dtype
        self._placed: list[Placement] = []  # per actor: what it asked for
        self._live: list[int] = []  # actors ready and serving, by index
        self._pending: dict[Any, int] = {}  # readiness ref → actor index
        self.add(placement)
        if start:
            self.wait_ready()

    def add(self, placement: Placement) -> list[int]:
        """`placement.actors` more actors of `placement`; they serve once `poll` or `wait_ready` found them ready."""
        import ray

        from lambda_eclipse.ray_session import cluster_resources

        short = gpu_shortfall(self.stage, placement, cluster_resources())
        if short and self.log is not None:
            self.log.warning("%s", short)
        options: dict[str, Any] = {}
        if placement.node:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(placement.node, soft=True)
        remote = ray.remote(num_cpus=placement.cpus, num_gpus=placement.gpus, max_restarts=RESTARTS,
                            max_task_retries=RESTARTS, **options)(ModelActor)
        added = []
        for _ in range(placement.actors):
            self.actors.append(remote.remote(self.build, placement.threads, placement.gpus))
            self._where.append({})
            self._placed.append(placement)
            added.append(len(self.actors) - 1)
            self._pending[self.actors[-1].ready.remote()] = added[-1]
        return added

    @property
    def pending(self) -> int:
        return len(self._pending)

    def on_node(self) -> dict[int, str | None]:
        """Each serving or loading actor's node: where it runs, or where it was meant to run while it loads."""
        serving = {i: self._where[i]["node"] for i in self._live}
        return serving | {i: self._placed[i].node for i in self._pending.values()}

    def poll(self, timeout: float | None = 0.0) -> list[int]:
        """Actors whose models have loaded since the last poll (waiting up to `timeout` s for the first; None: for all).
        A model that cannot load is raised as one line naming the stage, actor and cause."""
        import ray

        if not self._pending:
            return []
        done, _ = ray.wait(list(self._pending), num_returns=len(self._pending) if timeout is None else 1,
                           timeout=timeout)
        ready = []
        for ref in done:
            index = self._pending.pop(ref)
            self._where[index] = self._get(ref, index, "loading its models")
            self._live.append(index)
            ready.append(index)
        return ready

    def wait_ready(self) -> None:
        """Until every actor has loaded its models; a model that cannot load is raised here (one line), the pool
        shut down."""
        try:
            self.poll(timeout=None)
        except BaseException:
            self.shutdown()
            raise

    def remove(self, index: int) -> None:
        """Stop actor `index` (its node is gone, or its stage needs fewer actors); calls on it fail from now on."""
        import ray

        if index in self._live:
            self._live.remove(index)
        self._pending = {ref: i for ref, i in self._pending.items() if i != index}
        ray.kill(self.actors[index])

    def remove_on(self, nodes: set[str]) -> None:
        """Stop the serving actors on these nodes (they are gone)."""
        for index in [i for i in self._live if self._where[i]["node"] in nodes]:
            self.remove(index)

    def retire(self, index: int) -> bool:
        """Stop handing out actor `index` while its calls in flight finish (`remove` stops it); False if it was not
        serving."""
        if index not in self._live:
            return False
        self._live.remove(index)
        return True

    def handles(self) -> list:
        return [self.actors[i] for i in self._live]

    @property
    def size(self) -> int:
        """Actors serving now."""
        return len(self._live)

    def locations(self) -> list[dict]:
        """Where each serving actor runs: node, device, dtype."""
        return [self._where[i] for i in self._live]

    @property
    def nodes(self) -> set[str]:
        return {self._where[i]["node"] for i in self._live}

    def describe(self) -> str:
        p = self.placement
        places = ", ".join(f"{w['device']} {w['dtype']} on node {w['node'][:8]}" for w in self.locations())
        return f"{self.stage}: {p.actors} actor(s) × ({p.cpus} CPU, {p.gpus} GPU, {p.threads} threads): {places}"

    def _get(self, ref, index: int, doing: str) -> Any:
        """`ray.get(ref)`; a failure raised as one line naming the stage, actor and node (a UserError stays one)."""
        import ray

        try:
            return ray.get(ref)
        except Exception as exc:
            node = self._where[index].get("node", "")
            at = f"{self.stage} actor {index}" + (f" (node {node[:8]})" if node else "")
            cause = getattr(exc, "cause", None)
            if isinstance(cause, UserError):
                raise UserError(f"{at}, {doing}: {ray_error_reason(exc)}") from None
            raise WorkerError(f"{at} failed {doing}: {ray_error_reason(exc)}") from exc

    def call(self, fn: Callable, *args, doing: str = "") -> Any:
        """`fn(models, *args)` on the first ready actor."""
        first = self._live[0]
        return self._get(self.actors[first].run.remote(fn, *args), first, doing or fn.__name__)

    def map(self, fn: Callable, items: list[tuple], label: Callable[[int], str]) -> Iterator[tuple[int, Any, int]]:
        """`fn(models, *items[i])` for every i, spread over the ready actors (each keeps up to IN_FLIGHT calls queued),
        yielded as (i, result, actor index) in the order they finish. `label(i)` names item i in errors."""
        import ray

        pending = list(range(len(items)))
        running: dict = {}

        def submit(actor: int) -> None:
            i = pending.pop(0)
            running[self.actors[actor].run.remote(fn, *items[i])] = (i, actor)

        for _ in range(IN_FLIGHT):
            for actor in self._live:
                if pending:
                    submit(actor)
        while running:
            (ready,), _ = ray.wait(list(running), num_returns=1)
            i, actor = running.pop(ready)
            result = self._get(ready, actor, label(i))  # a failure ends the run: the caller shuts the pool down
            if pending:
                submit(actor)
            yield i, result, actor

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self._live, self._pending = [], {}


class PoolRuntime(Protocol):
    """The runtime settings a pool of model actors reads (the commands' `runtime` sections)."""

    ray_cpus: int
    gpus: float
    cpus_per_actor: float


@contextlib.contextmanager
def model_pool(stage: str, build: Callable[[], Any], runtime: PoolRuntime, actors: int, log) -> Iterator[ActorPool]:
    """Ray (lambda_eclipse.ray_session: RAY_ADDRESS's cluster, else a local one) and a started pool of `actors`
    actors, shut down on exit. A model actor's failure is logged to `log` (the Prefect run logger) in one line before
    it propagates."""
    from lambda_eclipse.ray_session import cluster_resources, ray_session

    with ray_session(runtime.ray_cpus):
        pool = None
        try:
            shape = placement(runtime.gpus, runtime.cpus_per_actor, actors, cluster_resources())
            pool = ActorPool(stage, build, shape, log)
            log.info("%s", pool.describe())
            yield pool
        except (UserError, WorkerError) as exc:
            log.error("%s", exc)
            raise
        finally:
            if pool is not None:
                pool.shutdown()
