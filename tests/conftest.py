import logging
import os
import tempfile
from pathlib import Path

# Before Prefect is imported anywhere: a private home, no analytics, no hub downloads. Each pytest-xdist worker (their
# environment is the controller's, made after this ran there) takes a home of its own.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix=f"prefect-home-{os.environ['PYTEST_XDIST_WORKER']}-")
else:
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect-home-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray's node address, and so every port its agents open (the metrics export of ray[default] too), on 127.0.0.1
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pytest

from storage.synthetic_features import featured_sample  # noqa: F401  (tests import it from here)

RUN_LOGGERS = ("prefect", "prefect.flow_runs", "prefect.task_runs")


def pytest_collection_modifyitems(items):
    """The modules marked `slow` first, the one also marked `longest` ahead of them, in collection order otherwise.
    pyproject's addopts run the suite on pytest-xdist, one module per worker at a time (`--dist loadfile`, in this
    order): the suite ends when its last module does, so the longest ones must not be the last to start."""
    items.sort(key=lambda item: (item.get_closest_marker("longest") is None, item.get_closest_marker("slow") is None))


@pytest.fixture(scope="module", autouse=True)
def run_loggers_stay_enabled(request):
    """Flow runs of this process send their log lines to the API through Prefect's run loggers: a module that disables
    them (logging.config.dictConfig, as import-linter's CLI calls it, disables every logger that exists) silences every
    later run's log, and a log check modules later fails without a clue. This names the module instead."""
    yield
    silenced = [name for name in RUN_LOGGERS if logging.getLogger(name).disabled]
    assert not silenced, (f"{request.module.__name__} disabled the loggers {silenced} (logging.config.dictConfig?): "
                          "later flow runs of this process would send no log line to the API")


@pytest.fixture(scope="session")
def prefect_harness():
    """One ephemeral Prefect API for the whole session (it takes ~13 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


# The session's flow-built dataset (built_dataset): 12 photos, 3 that do not decode and 1 too small, in units of 5.
BUILD_SETTINGS = ["resolution.min_side=96", "input.unit_size=5"]


def flow_inputs(root: Path) -> Path:
    """The photos folder of built_dataset: 12 ordinary photos, three files that do not decode (empty, text,
    truncated) and one photo below resolution.min_side."""
    from lambda_eclipse.synthetic import write_photos

    photos = root / "photos"
    write_photos(photos, 12, size=128)
    (photos / "bad").mkdir()
    (photos / "bad" / "empty.jpg").write_bytes(b"")
    (photos / "bad" / "text.png").write_text("not an image")
    (photos / "bad" / "truncated.jpg").write_bytes((photos / "photo_00000.jpg").read_bytes()[:300])
    write_photos(photos / "small", 1, size=64)  # decodes, then fails the resolution filter
    return photos


@pytest.fixture(scope="session")
def built_dataset(tmp_path_factory, prefect_harness, ray_local):
    """One dataset built by the build-dataset flow (tiny profile, every stage on the session's Ray) for the session:
    (photos, dataset, the flow's summary). The build-dataset flow tests check it; the prior trains on it. Tests read
    it and may build into their own outputs; a test that adds an input removes it again."""
    from flows.build_dataset import build_dataset

    root = tmp_path_factory.mktemp("flow")
    photos = flow_inputs(root)
    out = root / "dataset"
    summary = build_dataset(inputs=[str(photos)], output=str(out), profile="tiny", overrides=BUILD_SETTINGS)
    return photos, out, summary


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models' ops take microseconds: on a shared CPU a second intra-op thread costs more than the math
    (10–50× slower steps under load). Modules opt in; the thread count is restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def prefect_api_url(prefect_harness) -> str:
    """The session's Prefect API (prefect_harness), for the commands that tests run as subprocesses: given as
    PREFECT_API_URL, a command reports to it instead of starting an ephemeral server of its own (~15 s each)."""
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray (2 CPUs, loopback, no dashboard) for the session: every in-process flow, training run and actor
    pool joins it (lambda_eclipse.ray_session keeps a caller's session), instead of starting and stopping its own."""
    import ray

    from lambda_eclipse.ray_session import RUNTIME_ENV

    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             runtime_env=RUNTIME_ENV, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def ray_address(ray_local) -> str:
    """The address of the session's local Ray, for subprocesses (RAY_ADDRESS) that can share it."""
    import ray

    return ray.get_runtime_context().gcs_address


@pytest.fixture(scope="session")
def two_node_cluster(ray_local):
    """One 2-node Ray cluster (one CPU per node, loopback) for the session's multi-node tests (build-dataset and
    train-prior on an existing cluster), run by a child process: bench/local_cluster.py: LocalCluster (its
    address, and its pid, whose descendants are the cluster's processes). After ray_local: a local Ray started in
    this process once the cluster runs leaves the cluster cancelling every new actor ("cancelled before it started
    running"; Ray 2.60)."""
    from bench.local_cluster import local_cluster

    with local_cluster(nodes=2, cpus_per_node=1) as cluster:
        yield cluster


def shard_keys(root) -> list[str]:
    """The keys of every complete shard of the dataset at `root`, accepted and rejected, in shard order: each input
    once in a whole build."""
    import pyarrow.parquet as pq

    from storage.layout import complete_shards, shard_paths

    return [key for shard in complete_shards(root) for kind in ("parquet", "rejects")
            for key in pq.read_table(shard_paths(root, shard)[kind], columns=["key"]).column("key").to_pylist()]


def rewrite_text_states_as_legacy(root, shard: int) -> None:
    """Rewrite a shard's text_hidden_states as the fixed_size_list<float16> column datasets had before it became
    binary (storage/schema.py), updating _stats.json's hash of it: an old dataset, which must still be read."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from storage.layout import sha256_file, shard_paths, write_json_atomic
    from storage.schema import legacy_text_states_type, text_states

    paths = {kind: Path(path) for kind, path in shard_paths(root, shard).items()}
    table = pq.read_table(paths["parquet"])
    width = int(table.schema.metadata[b"text_width"])
    states = text_states(table["text_hidden_states"], width)
    legacy = pa.FixedSizeListArray.from_arrays(pa.array(states.reshape(-1)), type=legacy_text_states_type(width))
    index = table.schema.get_field_index("text_hidden_states")
    table = table.set_column(index, pa.field("text_hidden_states", legacy.type), legacy)
    pq.write_table(table, paths["parquet"])
    stats = json.loads(paths["stats"].read_text())
    stats["files"][paths["parquet"].name] = {"sha256": sha256_file(paths["parquet"]),
                                             "bytes": paths["parquet"].stat().st_size}
    write_json_atomic(paths["stats"], stats)


# The retrain loop's cheapest settings (tests/test_retrain_flow.py, tests/test_provenance.py)
RETRAIN_TRAIN = ["data.loader_workers=0", "train.batch_size=4", "train.warmup_steps=1", "val.every=0",
                 "checkpoint.every=4", "log.every=2", "train.max_steps=4", "runtime.trainers=1"]
RETRAIN_EVAL = ["evaluate.max_prompts=1", "evaluate.images_per_prompt=1", "evaluate.steps=2"]


def latest_artifact(key: str) -> str:
    """The data of the newest artifact with `key` on the session's Prefect API."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        body = {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1}
        (artifact,) = client.request("POST", "/artifacts/filter", json=body).json()
    return artifact["data"]


def logs_of_latest_run(flow: str, *until: str, timeout: float = 120) -> str:
    """The run log of the flow's run that ended last, from the Prefect API (prefect_harness), once it holds every
    `until` (log lines reach the API in batches, after the run may have returned). Past `timeout` seconds without
    them, an AssertionError lists the flow's runs and how many log lines each has, to tell a lost line from a wrong
    run. Ended last, not started last: a run made through the API (a test's claim) may start after the run under
    test and never log."""
    import time

    from prefect import get_client

    ended = {"type": {"any_": ["COMPLETED", "FAILED", "CRASHED", "CANCELLED"]}}
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        def runs(**state) -> list[dict]:
            body = {"flow_runs": state, "flows": {"name": {"any_": [flow]}}, "sort": "END_TIME_DESC", "limit": 20}
            return client.request("POST", "/flow_runs/filter", json=body).json()

        def log_of(run_id: str) -> str:
            body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200}
            return "\n".join(r["message"] for r in client.request("POST", "/logs/filter", json=body).json())

        run = runs(state=ended)[0]
        while True:
            logs = log_of(run["id"])
            if all(text in logs for text in until):
                return logs
            if time.monotonic() > deadline:
                seen = [(r["name"], r["state_type"], r["start_time"], r["end_time"], len(log_of(r["id"]).splitlines()))
                        for r in runs()]
                raise AssertionError(f"{flow} run {run['name']} has not logged {until} in {timeout} s; its log:\n"
                                     f"{logs}\nthe flow's runs (name, state, start, end, log lines): {seen}")
            time.sleep(0.5)
