"""A multi-node Ray cluster on this machine for tests and benchmarks (`ray.cluster_utils.Cluster`, loopback only):
nodes that come and go as a cluster's do. Test and benchmark support, not part of the package."""

from __future__ import annotations

import contextlib
import os

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
