"""The pipeline metrics of a local build, as Prometheus would scrape them: `build-dataset --metrics-port` (the CLI, in a
subprocess, as a user runs it; tiny profile), and once the build has ended every stage's counters on the endpoint
equal the funnel in summary.md. Ray's workers report every 10 s: the test waits for the values, not for a time."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from lambda_eclipse.synthetic import write_photos

pytestmark = pytest.mark.slow
SETTINGS = ["resolution.min_side=96", "input.unit_size=4"]
SAMPLE = re.compile(r"^(?P<name>ray_lambda_eclipse_\w+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def _metrics_agent_missing() -> bool:
    import ray._private.utils

    return ray._private.utils.get_dashboard_dependency_error() is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every pipeline series on the endpoint, summed over the labels Ray adds (worker, node, session)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    ours = ("stage", "outcome")
    series: dict = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
        key = (match["name"], tuple(sorted((k, v) for k, v in labels.items() if k in ours)))
        series[key] = series.get(key, 0.0) + float(match["value"])
    return series


def _funnel(summary: str) -> dict[str, tuple[int, int, int]]:
    rows = re.findall(r"^\| (\w+) \| (\d+) \| (\d+) \| (\d+) \|$", summary, re.MULTILINE)
    return {stage: (int(i), int(r), int(o)) for stage, i, r, o in rows}


def _by_stage(series: dict, name: str) -> dict[str, int]:
    return {dict(labels)["stage"]: round(v) for (n, labels), v in series.items() if n == name}


@pytest.mark.skipif(_metrics_agent_missing(), reason="ray[default] (Ray's metrics agent) is not installed")
def test_a_local_builds_metrics_equal_its_funnel(tmp_path: Path, prefect_api_url):
    """The command starts a Ray of its own (its metrics agent serves --metrics-port) and reports to the session's
    Prefect API."""
    photos = tmp_path / "photos"
    write_photos(photos, 6, size=128)
    (photos / "bad").mkdir()
    (photos / "bad" / "empty.jpg").write_bytes(b"")  # a decode reject
    write_photos(photos / "small", 1, size=64)  # a resolution reject
    out, port = tmp_path / "dataset", _free_port()
    cmd = [sys.executable, "-m", "flows.cli", "build-dataset", "--input", str(photos), "--output", str(out),
           "--workers", "2", "--metrics-port", str(port), "--metrics-linger", "900"]
    cmd += [a for s in SETTINGS for a in ("--set", s)]
    log = tmp_path / "cli.log"
    with log.open("w") as sink:
        env = os.environ | {"PREFECT_API_URL": prefect_api_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        env.pop("RAY_ADDRESS", None)
        proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        while not (out / "summary.md").exists():  # the build has ended; the endpoint lingers
            assert proc.poll() is None, f"the build ended without summary.md:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no summary.md after 900 s:\n{log.read_text()[-3000:]}"
            time.sleep(1)
        funnel = _funnel((out / "summary.md").read_text())
        assert funnel and funnel["decode"][1] >= 1 and funnel["resolution"][1] >= 1
        expected = {"in": {s: v[0] for s, v in funnel.items()}, "rejects": {s: v[1] for s, v in funnel.items()},
                    "out": {s: v[2] for s, v in funnel.items()}}
        shards = len(list((out / "shards").glob("*_stats.json")))
        accepted = funnel["features"][2]
        deadline = time.monotonic() + 180
        while True:
            series = _scrape(port)
            seen = {kind: {s: v for s, v in _by_stage(series, f"ray_lambda_eclipse_stage_{kind}_total").items()
                           if v or expected[kind].get(s)} for kind in expected}
            want = {kind: {s: v for s, v in values.items() if v} for kind, values in expected.items()}
            done = series.get(("ray_lambda_eclipse_units_done_total", ()), 0)
            good = series.get(("ray_lambda_eclipse_samples_total", (("outcome", "accepted"),)), 0)
            left = series.get(("ray_lambda_eclipse_units_remaining", ()))  # the flow's gauge
            if seen == want and done == shards and good == accepted and left == 0:
                break
            assert time.monotonic() < deadline, (f"after 180 s the endpoint says {seen}, {done} units, {good} "
                                                 f"accepted, {left} left; summary.md says {want}, {shards} shards, "
                                                 f"{accepted} accepted")
            time.sleep(2)
        # the model stages' actors reported their batches, and the flow the units left
        batches = {dict(k[1])["stage"] for k in series if k[0] == "ray_lambda_eclipse_batch_seconds_count"}
        assert {"caption", "nouns", "boxes", "masks", "features"} <= batches
        assert series[("ray_lambda_eclipse_bytes_written_total", ())] > 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # ends the linger; the CLI stops its Ray
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert proc.returncode == 0, log.read_text()[-3000:]
