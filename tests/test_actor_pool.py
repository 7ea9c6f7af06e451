"""The one actor pool (build-dataset's model stages, generate, interpolate, evaluate): placement (GPUs only where the
cluster has them, CPUs scaled to fit), calls spread over every actor, and failures as one line naming the stage, actor
and cause."""

import sys

import pytest

from lambda_eclipse.actor_pool import ActorPool, gpu_shortfall, placement
from lambda_eclipse.errors import UserError, WorkerError

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module", autouse=True)
def pickled_by_value():
    """Ray workers do not have tests/ on their path: this module's functions travel by value."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_gpus_only_where_the_cluster_has_them_and_cpus_scaled_to_fit():
    on_gpus = placement(1.0, 4.0, 2, {"CPU": 16, "GPU": 2})
    assert (on_gpus.gpus, on_gpus.cpus, on_gpus.threads, on_gpus.actors) == (1.0, 4.0, 4, 2)
    shared = placement(0.5, 1.0, 4, {"CPU": 3, "GPU": 2})
    assert (shared.gpus, shared.cpus, shared.threads) == (0.5, 0.75, 1)  # 4 actors × 0.75 CPU fit 3 CPUs
    on_cpus = placement(1.0, 1.0, 3, {"CPU": 2})
    assert (on_cpus.gpus, on_cpus.cpus, on_cpus.threads) == (0.0, 0.6666, 1)
    assert gpu_shortfall("evaluate", on_gpus, {"GPU": 2}) is None and gpu_shortfall("x", on_cpus, {"CPU": 2}) is None
    assert gpu_shortfall("evaluate", placement(1.0, 1.0, 3, {"CPU": 8, "GPU": 2}), {"GPU": 2}) == (
        "evaluate: 3 actor(s) × 1 GPU need 3 GPUs, the cluster has 2 now: they wait until nodes with GPUs join (an "
        "autoscaler); otherwise lower the actors or runtime.gpus")


class Doubler:
    def __init__(self, fail: str = ""):
        if fail == "user":
            raise UserError("models.decoder=/nowhere does not exist")
        if fail == "crash":
            raise RuntimeError("CUDA out of memory\nwhile loading the UNet")
        self.device, self.dtype = "cpu", "torch.float32"


def double(model: Doubler, x: int) -> tuple[int, int]:
    import os

    if x == 3:
        raise ValueError(f"cannot double {x}")
    return 2 * x, os.getpid()


def test_calls_are_spread_over_every_actor_and_come_back_whole():
    pool = ActorPool("test", Doubler, placement(0, 0.5, 2, {"CPU": 2}))
    try:
        assert [w["device"] for w in pool.locations()] == ["cpu", "cpu"] and pool.locations()[0]["dtype"] == "float32"
        assert "test: 2 actor(s) × (0.5 CPU, 0.0 GPU, 1 threads): cpu float32 on node " in pool.describe()
        items = [(x,) for x in (0, 1, 2, 4, 5, 6)]
        results = list(pool.map(double, items, lambda i: f"item {i}"))
        assert sorted((i, value) for i, (value, _), _ in results) == [(i, 2 * x) for i, (x,) in enumerate(items)]
        assert {actor for _, _, actor in results} == {0, 1}  # both actors served calls
        assert len({pid for _, (_, pid), _ in results}) == 2
        with pytest.raises(WorkerError, match=r"^test actor \d \(node [0-9a-f]{8}\) failed item 1: ValueError: cannot "
                                              r"double 3$"):
            list(pool.map(double, [(1,), (3,)], lambda i: f"item {i}"))
        assert pool.call(double, 7, doing="doubling")[0] == 14
    finally:
        pool.shutdown()


@pytest.mark.parametrize("fail, error, message", [
    ("user", UserError, "test actor 0, loading its models: models.decoder=/nowhere does not exist"),
    ("crash", WorkerError, "test actor 0 failed loading its models: RuntimeError: CUDA out of memory … while loading "
                           "the UNet"),
])
def test_a_model_that_cannot_load_fails_in_one_line(fail, error, message):
    from functools import partial

    with pytest.raises(error) as raised:
        ActorPool("test", partial(Doubler, fail), placement(0, 0.5, 1, {"CPU": 2}))
    assert str(raised.value) == message


def die_once(model: Doubler, marker: str) -> int:
    """Kills its actor's process the first time (as an OOM kill or a lost node would), then answers."""
    import os

    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return os.getpid()


def test_a_killed_actor_is_restarted_and_its_call_retried(tmp_path):
    pool = ActorPool("test", Doubler, placement(0, 0.5, 1, {"CPU": 2}))
    try:
        marker = tmp_path / "died"
        pid = pool.call(die_once, str(marker), doing="dying once")
        assert marker.exists() and pid == pool.call(die_once, str(marker), doing="answering")
    finally:
        pool.shutdown()
