"""Connect to Ray: the cluster named by RAY_ADDRESS (e.g. "auto" on a head node), else a local one."""

from __future__ import annotations

import contextlib
import importlib.abc
import os
import sys
from typing import Any

LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray resolves this machine's address as 127.0.0.1
# Transparent huge pages for torch's CPU tensors of 2 MB and more (torch reads this once, at its first allocation): a
# fresh batch of the prior's loader (50 MB at d = 1280, batch 256) then takes 25 page faults instead of 12,800, and
# the in-process loader gives ~6k samples/s here instead of ~3.9k (bench/train_prior.py --loader-only).
TORCH_ENV = {"THP_MEM_ALLOC_ENABLE": "1"}
RUNTIME_ENV = {"worker_process_setup_hook": "lambda_eclipse.ray_session.worker_setup", "env_vars": TORCH_ENV}


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    """Applies lambda_eclipse.compat's fix when this process first imports torchvision, then steps aside (the import
    goes on as usual)."""

    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision":
            sys.meta_path.remove(self)
            from lambda_eclipse.compat import ensure_torchvision_ops

            ensure_torchvision_ops()
        return None


def worker_setup() -> None:
    """Ray `worker_process_setup_hook`, run in every worker before any task or actor. It waits for the worker's first
    import of torchvision rather than importing torch now: that costs ~2.5 s of CPU, and most Ray workers (Ray Train's
    controller and its helper actors, queues) never use torch."""
    if "torchvision" in sys.modules:
        from lambda_eclipse.compat import ensure_torchvision_ops

        ensure_torchvision_ops()
    else:
        sys.meta_path.insert(0, _BeforeTorchvision())


@contextlib.contextmanager
def ray_session(workers: int = 0, metrics_port: int | None = None):
    """Ray for the block: RAY_ADDRESS's cluster (which exports metrics as it was started to), else a local Ray whose
    metrics agent exports on 127.0.0.1:`metrics_port` (default $LAMBDA_ECLIPSE_METRICS_PORT; none: a port of Ray's
    choosing). A session that is already up (a caller's) is used as it is."""
    from lambda_eclipse.metrics import metrics_port as port_from_env

    address = os.environ.get("RAY_ADDRESS")
    metrics_port = metrics_port or port_from_env()
    if address and address.startswith(("127.", "localhost")):
        # Ray turns a loopback address into this host's network address, where a loopback-only cluster (tests,
        # benchmarks) does not listen; this setting keeps it on loopback. Read when Ray is imported.
        os.environ.setdefault(LOOPBACK_ONLY, "0")
    import ray

    if ray.is_initialized():  # a caller (a test, a notebook) owns the session
        yield
        return
    if address:
        # A cluster on loopback (tests, benchmarks) is reached as 127.0.0.1, not as this host's network address.
        loopback = address.startswith(("127.", "localhost"))
        ray.init(
            address=address,
            runtime_env=RUNTIME_ENV,
            log_to_driver=False,
            _node_ip_address="127.0.0.1" if loopback else None,
        )
    else:
        # Bound to loopback, no dashboard: ~5 s to start here and ~1.9 GB less memory (docs/pitfalls.md).
        # address="local": a new Ray of this process's own. Without it, ray.init() joins the cluster last started on
        # this machine (/tmp/ray/ray_current_cluster), e.g. another user's or a test's, which may be gone.
        # Loopback only (read by the processes Ray starts now): the node's address, and so every port its agents open
        # (the metrics export too), is 127.0.0.1 rather than this host's network address.
        os.environ.setdefault(LOOPBACK_ONLY, "0")
        extra: dict[str, Any] = {"_metrics_export_port": metrics_port} if metrics_port else {}
        ray.init(
            address="local",
            num_cpus=workers or None,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            runtime_env=RUNTIME_ENV,
            log_to_driver=False,
            **extra,
        )
    try:
        yield
    finally:
        ray.shutdown()


def cluster_resources() -> dict[str, float]:
    """The cluster's total resources (CPU, GPU, memory, …), as Ray accounts them."""
    import ray

    return dict(ray.cluster_resources())
