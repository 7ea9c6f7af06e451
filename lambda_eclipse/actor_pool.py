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
    """What each actor of a pool gets: Ray resources, torch threads, and how many actors."""

    cpus: float
    gpus: float
    actors: int
    threads: int


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
    """`placement.actors` ModelActors of one stage, loaded in parallel; calls spread over them. `start=False` leaves
    waiting for the models to the caller (`wait_ready`), so that several pools load at once."""

    def __init__(self, stage: str, build: Callable[[], Any], placement: Placement, log=None, start: bool = True):
        import ray

        from lambda_eclipse.ray_session import cluster_resources

        self.stage, self.placement = stage, placement
        p = placement
        short = gpu_shortfall(stage, p, cluster_resources())
        if short and log is not None:
            log.warning("%s", short)
        remote = ray.remote(num_cpus=p.cpus, num_gpus=p.gpus, max_restarts=RESTARTS,
                            max_task_retries=RESTARTS)(ModelActor)
        self.actors: list = [remote.remote(build, p.threads, p.gpus) for _ in range(p.actors)]
        self.where: list[dict] = [{} for _ in self.actors]
        self._pending = [actor.ready.remote() for actor in self.actors]
        if start:
            self.wait_ready()

    def wait_ready(self) -> None:
        """Until every actor has loaded its models; a model that cannot load is raised here (one line), the pool
        shut down."""
        try:
            self.where = [self._get(ref, i, "loading its models") for i, ref in enumerate(self._pending)]
        except BaseException:
            self.shutdown()
            raise

    @property
    def nodes(self) -> set[str]:
        return {w["node"] for w in self.where if w}

    def describe(self) -> str:
        p = self.placement
        places = ", ".join(f"{w['device']} {w['dtype']} on node {w['node'][:8]}" for w in self.where if w)
        return f"{self.stage}: {p.actors} actor(s) × ({p.cpus} CPU, {p.gpus} GPU, {p.threads} threads): {places}"

    def _get(self, ref, index: int, doing: str) -> Any:
        """`ray.get(ref)`; a failure raised as one line naming the stage, actor and node (a UserError stays one)."""
        import ray

        try:
            return ray.get(ref)
        except Exception as exc:
            node = self.where[index].get("node", "")
            at = f"{self.stage} actor {index}" + (f" (node {node[:8]})" if node else "")
            cause = getattr(exc, "cause", None)
            if isinstance(cause, UserError):
                raise UserError(f"{at}, {doing}: {ray_error_reason(exc)}") from None
            raise WorkerError(f"{at} failed {doing}: {ray_error_reason(exc)}") from exc

    def call(self, fn: Callable, *args, doing: str = "") -> Any:
        """`fn(models, *args)` on the first actor."""
        return self._get(self.actors[0].run.remote(fn, *args), 0, doing or fn.__name__)

    def map(self, fn: Callable, items: list[tuple], label: Callable[[int], str]) -> Iterator[tuple[int, Any, int]]:
        """`fn(models, *items[i])` for every i, spread over the actors (each keeps up to IN_FLIGHT calls queued),
        yielded as (i, result, actor index) in the order they finish. `label(i)` names item i in errors."""
        import ray

        pending = list(range(len(items)))
        running: dict = {}

        def submit(actor: int) -> None:
            i = pending.pop(0)
            running[self.actors[actor].run.remote(fn, *items[i])] = (i, actor)

        for _ in range(IN_FLIGHT):
            for actor in range(len(self.actors)):
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


class PoolRuntime(Protocol):
    """The runtime settings a pool of model actors reads (the commands' `runtime` sections)."""

    workers: int
    gpus: float
    cpus: float


@contextlib.contextmanager
def model_pool(stage: str, build: Callable[[], Any], runtime: PoolRuntime, actors: int, log) -> Iterator[ActorPool]:
    """Ray (lambda_eclipse.ray_session: RAY_ADDRESS's cluster, else a local one) and a started pool of `actors`
    actors, shut down on exit. A model actor's failure is logged to `log` (the Prefect run logger) in one line before
    it propagates."""
    from lambda_eclipse.ray_session import cluster_resources, ray_session

    with ray_session(runtime.workers):
        pool = None
        try:
            pool = ActorPool(stage, build, placement(runtime.gpus, runtime.cpus, actors, cluster_resources()), log)
            log.info("%s", pool.describe())
            yield pool
        except (UserError, WorkerError) as exc:
            log.error("%s", exc)
            raise
        finally:
            if pool is not None:
                pool.shutdown()
