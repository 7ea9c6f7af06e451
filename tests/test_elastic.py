"""build-dataset on a cluster whose nodes come and go (a local multi-node `ray.cluster_utils.Cluster`, loopback only),
driven as a user runs it: `RAY_ADDRESS=… lambda-eclipse build-dataset …`. A default build reserves the cluster; a node
lost mid-build costs only the work that was on it; a node that joins gets actors; every input is accounted for once."""

import subprocess
import sys

import pytest
from build_process import Build
from conftest import shard_keys

from bench.local_cluster import local_cluster
from lambda_eclipse.synthetic import write_photos
from storage.layout import complete_shards

pytestmark = pytest.mark.slow
SETTINGS = ["--set", "resolution.min_side=96", "--set", "input.unit_size=2"]

# Samples the cluster's reserved CPUs every 0.2 s from its own Ray client and prints the peak fraction when its stdin
# closes: Ray's own accounting of what the build holds, not a guess from the plan.
SAMPLER = """
import os, sys, threading, time
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # the cluster listens on loopback only (ray_session.py)
import ray
ray.init(address=sys.argv[1], log_to_driver=False, _node_ip_address="127.0.0.1")
peak, done = 0.0, threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
print("sampling", flush=True)
while not done.is_set():
    total, free = ray.cluster_resources().get("CPU", 0), ray.available_resources().get("CPU", 0)
    if total:
        peak = max(peak, (total - free) / total)
    time.sleep(0.2)
print(peak, flush=True)
"""


def test_a_build_fills_the_cluster_survives_a_lost_node_and_uses_one_that_joins(tmp_path, prefect_api_url):
    """Costs a cluster of its own (its nodes are removed and added under the build: the session's cannot serve), a
    build and a sampling client: ~85 s alone, ~100 s beside another pytest-xdist worker."""
    photos, out = tmp_path / "photos", tmp_path / "dataset"
    write_photos(photos, 40, size=128)  # 20 shards: the build outlasts a node lost and one added
    with local_cluster(nodes=2, cpus_per_node=2) as cluster:
        sampler = subprocess.Popen([sys.executable, "-c", SAMPLER, cluster.address], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
        assert sampler.stdout and sampler.stdout.readline().strip() == "sampling"
        build = Build(photos, out, SETTINGS, prefect_api_url, ray_address=cluster.address)
        build.wait_for("model actors ready on 2 node(s) of 2")
        build.wait_for(" shards complete · ")  # the first shard is done (its INFO line): the pools are serving
        assert sampler.stdin
        sampler.stdin.close()
        peak = float(sampler.stdout.readline())
        (worker,) = cluster.worker_nodes()
        cluster.remove_node(worker)  # a spot node taken back, mid-build
        build.wait_for("cluster changed (1 node(s) lost; 1 node(s) now)")
        cluster.add_node()
        build.wait_for("cluster changed (1 node(s) joined; 2 node(s) now)")
        code, stdout, stderr = build.finish()
        sampler.wait(timeout=60)
    assert code == 0, stderr[-4000:]
    assert peak >= 0.9, f"the build reserved at most {peak:.0%} of the cluster's CPUs"
    joined = next(line for line in stderr.splitlines() if "1 node(s) joined" in line)
    assert "→" in joined  # the pools grew onto the new node
    assert "of 40 inputs in 20 shards" in stdout
    assert complete_shards(out) == list(range(20))
    keys = shard_keys(out)
    assert len(keys) == len(set(keys)) == 40  # every input once: nothing lost with the node, nothing built twice
