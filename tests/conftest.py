import os
import tempfile

# Before Prefect is imported anywhere: a private home, no analytics, no hub downloads.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect-home-"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest

from lambda_eclipse.synthetic_features import featured_sample  # noqa: F401  (tests import it from here)


@pytest.fixture(scope="session")
def prefect_harness():
    """One ephemeral Prefect API for the whole session (it takes ~13 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


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
def ray_local():
    import ray

    from lambda_eclipse.ray_session import RUNTIME_ENV

    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             runtime_env=RUNTIME_ENV, log_to_driver=False)
    yield
    ray.shutdown()
