"""Faults during a build (tiny profile): a model actor killed mid-build, an input deleted mid-build, an output that
fills up. The build either completes with every input accounted for, or fails in one line and leaves no shard that
looks complete."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lambda_eclipse.synthetic import write_photos
from storage.layout import complete_shards, shard_paths

pytestmark = pytest.mark.slow
SETTINGS = ["resolution.min_side=96", "input.unit_size=2"]


def _wait_for(condition, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _stage_actors() -> dict[str, int]:
    """The model actors that Ray's control store (GCS) lists as alive, by actor id, with their worker's pid: Ray's own
    view, not a count of processes (a process appears and takes its title before or after Ray calls it alive)."""
    from ray._private.state import actors

    return {actor_id: info["Pid"] for actor_id, info in actors(actor_state_name="ALIVE").items()
            if info["ActorClassName"].endswith("ModelActor")}


def test_a_killed_actor_and_a_deleted_input_do_not_stop_the_build(tmp_path, prefect_harness, ray_local):
    from flows.build_dataset import build_dataset

    photos, out = tmp_path / "photos", tmp_path / "dataset"
    write_photos(photos, 12, size=128)
    last = sorted(photos.iterdir())[-1]  # in the last unit, which starts long after the first shard is done
    result: dict = {}
    earlier = set(_stage_actors())  # the shared Ray may hold other builds' actors; this build's are new
    run = threading.Thread(
        target=lambda: result.update(build_dataset(inputs=[str(photos)], output=str(out), overrides=SETTINGS))
    )
    run.start()
    try:
        _wait_for(lambda: complete_shards(out), "the first shard")
        # the build's five model actors (one per model stage), as Ray sees them: alive, each with its worker's pid
        _wait_for(lambda: len(set(_stage_actors()) - earlier) >= 5, "Ray to list the build's 5 model actors alive")
        victims = {a: pid for a, pid in _stage_actors().items() if a not in earlier}
        assert len(victims) == 5, victims
        os.kill(next(iter(victims.values())), signal.SIGKILL)  # Ray restarts it and retries the call
        last.unlink()
    finally:
        run.join(timeout=900)
    assert not run.is_alive(), "the build did not finish"
    assert result["inputs"] == 12 and result["accepted"] + result["rejected"] == 12 and result["shards"] == 6
    keys, rejects = [], []
    for shard in complete_shards(out):
        keys += pq.read_table(shard_paths(out, shard)["parquet"], columns=["key"]).column("key").to_pylist()
        table = pq.read_table(shard_paths(out, shard)["rejects"]).to_pylist()
        keys += [r["key"] for r in table]
        rejects += table
    assert len(keys) == len(set(keys)) == 12
    (gone,) = [r for r in rejects if r["source"] == str(last)]
    assert gone["stage"] == "decode" and gone["reason"].startswith("unreadable file: [Errno 2] No such file")


@pytest.fixture
def tiny_disk(tmp_path):
    """A 160 KiB tmpfs: room for dataset.json and the manifest, not for a shard of 512 px photos."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_output_fails_in_one_line_naming_the_path_and_leaves_no_complete_shard(tmp_path, tiny_disk,
                                                                                       prefect_api_url, ray_address):
    photos, out = tmp_path / "photos", tiny_disk / "dataset"
    write_photos(photos, 4, size=512)
    cmd = [sys.executable, "-m", "flows.cli", "build-dataset", "--input", str(photos), "--output", str(out)]
    cmd += [a for s in ["resolution.min_side=96", "input.unit_size=4"] for a in ("--set", s)]
    # the session's Prefect API and Ray: the command starts neither of its own
    env = os.environ | {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_API_URL": prefect_api_url,
                        "RAY_ADDRESS": ray_address}
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stderr[-3000:]
    (last,) = [line for line in run.stderr.splitlines() if line.startswith("lambda-eclipse build-dataset: ")]
    # every try failed the same way: the unit is recorded and the line names it, the cause and the path
    assert last.startswith(f"lambda-eclipse build-dataset: failed: 1 of 1 unit(s) failed after 4 tries: shard 00000 "
                           f"(folder {photos} [0:4]): OSError"), last
    assert "No space left on device" in last and str(out / "shards") in last
    assert complete_shards(out) == []
    assert sorted(p.name for p in Path(out, "shards").iterdir()) == []  # the failed attempt's files are gone
