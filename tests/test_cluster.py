"""build-dataset on an existing 2-node Ray cluster (`ray.cluster_utils.Cluster`, one CPU per node), driven as a
user would: `RAY_ADDRESS=… lambda-eclipse build-dataset …`. The cluster is the session's (conftest.two_node_cluster,
shared with the train-prior cluster test); it lives in a child process (`local_cluster`), so only the processes the
tests started are stopped. The command reports to the session's Prefect API instead of starting its own."""

import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from lambda_eclipse.synthetic import write_photos
from storage.layout import complete_shards, read_json, sha256_file, shard_names, shard_paths

pytestmark = pytest.mark.slow


def test_build_dataset_on_an_existing_two_node_cluster(two_node_cluster, prefect_api_url, tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "dataset"
    write_photos(photos, 8, size=128)
    cmd = [sys.executable, "-m", "flows.cli", "build-dataset", "--input", str(photos), "--output", str(out),
           "--set", "resolution.min_side=96", "--set", "input.unit_size=3"]
    env = os.environ | {"RAY_ADDRESS": two_node_cluster.address, "PREFECT_API_URL": prefect_api_url,
                        "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "of 8 inputs in 3 shards" in run.stdout
    assert "model actors ready on 2 node(s)" in run.stderr  # five actors of a third of a CPU need both nodes
    assert complete_shards(out) == [0, 1, 2]
    keys = []
    for shard in complete_shards(out):
        paths = shard_paths(out, shard)
        stats = read_json(paths["stats"])
        assert stats["inputs"] == stats["accepted"] + stats["rejected"] == (3 if shard < 2 else 2)
        for name in ("parquet", "tar", "rejects"):
            assert stats["files"][shard_names(shard)[name]]["sha256"] == sha256_file(paths[name])
        keys += pq.read_table(paths["parquet"], columns=["key"]).column("key").to_pylist()
        keys += pq.read_table(paths["rejects"], columns=["key"]).column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 8


def test_without_ray_address_a_run_starts_its_own_ray_not_the_last_cluster_on_the_machine(two_node_cluster):
    """A cluster started on this machine is recorded in /tmp/ray; a run without RAY_ADDRESS must not join it."""
    code = (
        "import ray\nfrom lambda_eclipse.ray_session import ray_session\n"
        "with ray_session(workers=1):\n    print(ray.cluster_resources()['CPU'], len(ray.nodes()))"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["1.0", "1"]  # its own one-CPU node, not the 2-node cluster
