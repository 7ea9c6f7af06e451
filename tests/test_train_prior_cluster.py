"""train-prior on a 2-node Ray cluster (`ray.cluster_utils.Cluster`, one CPU per node: the session's,
conftest.two_node_cluster), driven as a user would (`RAY_ADDRESS=… lambda-eclipse train-prior --output file://…`):
two Ray Train workers (DistributedDataParallel, gloo), checkpoints through Ray Train to a `file://` run directory.
One training worker is SIGKILLed mid-run; Ray restarts the worker group, it resumes from the last checkpoint, and the
run ends on its own with the same weights and history as an uninterrupted run of two trainers, which trains meanwhile
on the session's local Ray."""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from safetensors.torch import load_file

from storage.run_dir import read_metrics
from storage.synthetic_features import write_feature_dataset as write_dataset

pytestmark = pytest.mark.slow
STEPS = 120
SETTINGS = ["runtime.trainers=2", "data.loader_workers=0", "train.batch_size=8", "train.warmup_steps=5", "val.every=0",
            "val.batch_size=4", "checkpoint.every=10", "log.every=10", f"train.steps_per_run={STEPS}"]


def _train_prior(data, run, address, api_url) -> subprocess.Popen:
    """The command, its output (stdout and stderr) in run.log beside the run directory."""
    cmd = [sys.executable, "-m", "flows.cli", "train-prior", "--data", str(data), "--output",
           run.as_uri(), *[a for s in SETTINGS for a in ("--set", s)]]
    env = os.environ | {"RAY_ADDRESS": address, "PREFECT_API_URL": api_url}
    with open(run.with_suffix(".log"), "w") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def _workers(cluster: int) -> set[int]:
    """The Ray Train worker processes of the cluster run by the process `cluster` (its descendants)."""
    found = set()
    for process in psutil.Process(cluster).children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(process.cmdline()):
                found.add(process.pid)
        except psutil.Error:
            pass
    return found


def _exactly_two(found: set[int]) -> set[int] | None:
    return found if len(found) == 2 else None


def _wait(condition, what: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_a_killed_training_worker_is_restarted_and_the_run_ends_as_if_uninterrupted(two_node_cluster, ray_address,
                                                                                   prefect_api_url, tmp_path):
    """Costs two Ray Train runs of two trainers at once (the reference on the session's local Ray) and a restart of
    the killed run's worker group: ~70 s alone, ~120 s beside another pytest-xdist worker."""
    data = write_dataset(tmp_path / "data", [(40, 4), (40, 4)])
    once = _train_prior(data, tmp_path / "once", ray_address, prefect_api_url)
    run = tmp_path / "killed"
    killed = _train_prior(data, run, two_node_cluster.address, prefect_api_url)
    try:
        # A checkpoint registered by Ray Train (its manager's record is written after the upload), not yet the end.
        _wait(lambda: (run / "checkpoints" / "checkpoint_manager_snapshot.json").is_file(), "the first checkpoint")
        workers = _wait(lambda: _exactly_two(_workers(two_node_cluster.pid)), "two training workers", 60)
        assert not (run / "summary.json").exists(), "the run ended before the kill: make it longer"
        victim = max(workers)
        os.kill(victim, signal.SIGKILL)
        _wait(lambda: not psutil.pid_exists(victim) or psutil.Process(victim).status() == psutil.STATUS_ZOMBIE,
              "the killed worker to go")
        restarted = _wait(lambda: _exactly_two(_workers(two_node_cluster.pid) - workers), "Ray's restarted workers")
        killed.wait(timeout=900)
        once.wait(timeout=900)
    finally:
        for proc in (killed, once):
            if proc.poll() is None:
                proc.kill()
    out, reference = (tmp_path / "killed.log").read_text(), (tmp_path / "once.log").read_text()
    assert once.returncode == 0, reference[-4000:]
    assert killed.returncode == 0, out[-4000:]
    assert victim not in restarted
    assert f"trained to step {STEPS}" in out

    final = {name: load_file(tmp_path / name / "final" / "diffusion_pytorch_model.safetensors")
             for name in ("once", "killed")}
    assert final["once"].keys() == final["killed"].keys()
    for key, value in final["once"].items():
        assert (value == final["killed"][key]).all(), key
    without_speed = [[{k: v for k, v in r.items() if k != "samples_per_s"} for r in read_metrics(tmp_path / name)]
                     for name in ("once", "killed")]
    assert without_speed[0] == without_speed[1]
    assert [r["step"] for r in without_speed[1] if r["split"] == "val"] == [STEPS]
