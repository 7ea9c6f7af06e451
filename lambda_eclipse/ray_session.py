"""Connect to Ray: the cluster named by RAY_ADDRESS (e.g. "auto" on a head node), else a local one."""

from __future__ import annotations

import contextlib
import os

RUNTIME_ENV = {"worker_process_setup_hook": "lambda_eclipse.compat.worker_setup"}


@contextlib.contextmanager
def ray_session(workers: int = 0):
    import ray

    if ray.is_initialized():  # a caller (a test, a notebook) owns the session
        yield
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], runtime_env=RUNTIME_ENV, log_to_driver=False)
    else:
        # Bound to loopback, no dashboard: ~5 s to start here and ~1.9 GB less memory (DESIGN.md).
        ray.init(
            num_cpus=workers or None,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            runtime_env=RUNTIME_ENV,
            log_to_driver=False,
        )
    try:
        yield
    finally:
        ray.shutdown()
