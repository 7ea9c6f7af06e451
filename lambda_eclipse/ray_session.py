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


_CLUSTER = """
import sys
from ray.cluster_utils import Cluster

nodes, cpus, store = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
node = {"num_cpus": cpus, "node_ip_address": "127.0.0.1", "object_store_memory": store}
cluster = Cluster(initialize_head=True, head_node_args=node | {"include_dashboard": False})
for _ in range(nodes - 1):
    cluster.add_node(**node)
cluster.wait_for_nodes()
print(cluster.address, flush=True)
for line in sys.stdin:  # commands from the owner, until it closes our stdin
    verb, _, arg = line.strip().partition(" ")
    if verb == "add":
        added = cluster.add_node(**node | ({"num_cpus": float(arg)} if arg else {}))
        cluster.wait_for_nodes()
        print(added.node_id, flush=True)
    elif verb == "remove":
        (gone,) = [n for n in cluster.worker_nodes if n.node_id == arg]
        cluster.remove_node(gone, allow_graceful=False)
        print("removed", flush=True)
    elif verb == "nodes":
        print(" ".join(n.node_id for n in cluster.worker_nodes), flush=True)
cluster.shutdown()
"""


class LocalCluster:
    """A handle on `local_cluster`'s cluster: its address, and worker nodes added or removed (as a spot node joins or
    is taken back) while something runs on it."""

    def __init__(self, proc, address: str):
        self.proc, self.address = proc, address

    @property
    def pid(self) -> int:
        """The process that runs the cluster: every node's processes are its descendants."""
        return self.proc.pid

    def _ask(self, command: str) -> str:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def add_node(self, cpus: float | None = None) -> str:
        """A new worker node (of `cpus` CPUs, else the others' count); its node id once the cluster has it."""
        return self._ask("add" + (f" {cpus}" if cpus is not None else ""))

    def remove_node(self, node_id: str) -> None:
        """Stop a worker node at once, as a lost machine would (its raylet is killed, not drained)."""
        self._ask(f"remove {node_id}")

    def worker_nodes(self) -> list[str]:
        return self._ask("nodes").split()


@contextlib.contextmanager
def local_cluster(nodes: int = 2, cpus_per_node: float = 1, object_store_bytes: int = 1 << 30):
    """A multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`, loopback only) for tests and
    benchmarks, run by a child process so that the caller is a plain client; yields a `LocalCluster` (its address,
    and nodes to add or remove). Stopping it stops only the processes it started. Each node's object store holds
    `object_store_bytes` (Cluster's own default is small enough that 1024² photos spill to disk)."""
    import subprocess
    import sys

    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", _CLUSTER, str(nodes), str(cpus_per_node), str(object_store_bytes)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )
    try:
        address = proc.stdout.readline().strip() if proc.stdout else ""
        if not address:
            raise RuntimeError(f"the local {nodes}-node Ray cluster did not start (exit code {proc.wait()})")
        yield LocalCluster(proc, address)
    finally:
        if proc.stdin:
            proc.stdin.close()
        proc.wait(timeout=120)
