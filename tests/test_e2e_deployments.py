"""End to end, as an operator runs it (docs/operate.md): `prefect server start` on 127.0.0.1 with a private
PREFECT_HOME, the work pools and the `gpu` global concurrency limit made with the CLI, `prefect deploy --all`, a
process worker, a tiny build-dataset run through the deployment; the retraining loop it triggers (validate → train →
evaluate → promote; generate's deployment without a prior then uses the promoted prior; an invalid dataset trains
nothing); its artifacts opened in the Prefect UI in headless Chromium; a bad parameter failing fast; and a worker killed
mid-run whose run, retried after a restart, continues without redoing complete shards (build-dataset) or from its last
checkpoint (train-prior). Every process started here (server, workers, flow runs, Ray, browser) is ended, also on
failure. The loop's other doors (a duplicate trigger, a worse candidate, `generate` from the CLI) are the same flows,
tested in process by tests/test_retrain_flow.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import shard_keys

from lambda_eclipse.synthetic import write_photos
from storage.layout import complete_shards, sha256_file, shard_names, shard_paths
from storage.shard_writer import split_of
from storage.sources import sample_key
from storage.validate import validate

pytestmark = [pytest.mark.slow, pytest.mark.longest]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TINY = ["resolution.min_side=96"]
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
RETRAIN = ("retrain-on-new-dataset", "retrain-nightly")  # the loop's deployments, both of the flow `retrain`
# The loop's deployments as an operator sizes them for a smoke test: a few training steps, one DreamBench prompt.
TINY_LOOP = {"overrides": ["train.max_steps=6", "train.batch_size=2", "train.warmup_steps=1", "val.every=0",
                           "val.batch_size=2", "checkpoint.every=6", "log.every=2", "data.loader_workers=0",
                           "runtime.trainers=1"],
             "eval_overrides": ["evaluate.max_prompts=1", "evaluate.images_per_prompt=1", "evaluate.steps=2"]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_tree(pid: int, sig: int = signal.SIGKILL) -> list[psutil.Process]:
    """Signal a process and all its descendants; returns them. SIGKILL stops the whole tree first, as a machine that
    dies: otherwise a parent still alive between its child's kill and its own (a Prefect worker) reports the child's
    exit (the run Crashed), which on a busy machine it has time to do."""
    try:
        top = psutil.Process(pid)
        procs = [top] + top.children(recursive=True)  # listed before any is signalled: none is re-parented yet
    except psutil.NoSuchProcess:
        return []
    for s in ([signal.SIGSTOP] if sig == signal.SIGKILL else []) + [sig]:
        for p in procs:
            try:
                p.send_signal(s)
            except psutil.NoSuchProcess:
                pass
    return procs


class Stack:
    """A Prefect server and the processes around it; every process started is ended by `close()`."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.logs = tmp / "logs"
        self.logs.mkdir()
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {
            "PREFECT_HOME": str(tmp / "prefect-home"),
            "PREFECT_API_URL": f"{self.url}/api",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            # a killed run's `gpu` lease is freed by the server's repossessor sweep (15 s apart by default) once it
            # expires: sweep every second so each kill test waits for the lease itself, not for the sweep as well
            "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "1",
            "HF_HUB_OFFLINE": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
            "LAMBDA_ECLIPSE_ROOT": str(ROOT),
            "LAMBDA_ECLIPSE_DATA": str(tmp / "data"),
            "LAMBDA_ECLIPSE_RUNS": str(tmp / "runs"),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # the worker's `python` is this venv's
        }
        self.procs: dict[str, subprocess.Popen] = {}
        self.api = _PatientClient(base_url=f"{self.url}/api", timeout=60)
        self.timings: dict[str, float] = {}

    # -- processes -----------------------------------------------------------------------------------------------

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen(args, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def stop(self, name: str, sig: int = signal.SIGTERM) -> list[psutil.Process]:
        proc = self.procs.pop(name, None)
        if proc is None:
            return []
        procs = _kill_tree(proc.pid, sig)
        _, alive = psutil.wait_procs(procs, timeout=20)
        for p in alive:
            _kill_tree(p.pid)
        psutil.wait_procs(alive, timeout=10)
        proc.wait(timeout=10)
        return procs

    def prefect(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        result = subprocess.run([str(BIN / "prefect"), *args], cwd=ROOT, env=self.env, capture_output=True,
                                text=True, timeout=timeout)
        assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result

    def start_worker(self, name: str, pool: str, *queues: str) -> None:
        args = [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--name", name]
        for q in queues:
            args += ["--work-queue", q]
        self.start(name, args)

    def close(self) -> None:
        for name in list(self.procs)[::-1]:
            self.stop(name)
        self.api.close()
        for child in psutil.Process().children(recursive=True):  # a browser left by a failed test
            if "chrom" in child.name().lower():
                _kill_tree(child.pid)

    # -- API -------------------------------------------------------------------------------------------------------

    def deployment(self, name: str) -> dict:
        flow = "retrain" if name in RETRAIN else name
        response = self.api.get(f"/deployments/name/{flow}/{name}")
        response.raise_for_status()
        return response.json()

    def run_deployment(self, name: str, parameters: dict, job_variables: dict | None = None) -> str:
        body = {"parameters": parameters} | ({"job_variables": job_variables} if job_variables else {})
        response = self.api.post(f"/deployments/{self.deployment(name)['id']}/create_flow_run", json=body)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def flow_run(self, run_id: str) -> dict:
        return self.api.get(f"/flow_runs/{run_id}").json()

    def wait(self, run_id: str, states=TERMINAL, timeout: float = 600) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.flow_run(run_id)
            if run["state"]["type"] in states:
                return run
            time.sleep(1)
        raise AssertionError(f"flow run {run_id} still {run['state']['type']} after {timeout} s; "
                             f"logs:\n{self.run_logs(run_id)[-4000:]}")

    def runs_of(self, deployment: str, **parameters) -> list[dict]:
        """Runs of a deployment whose parameters include `parameters` (the cron schedule adds runs of its own)."""
        body = {"deployments": {"id": {"any_": [self.deployment(deployment)["id"]]}},
                "sort": "EXPECTED_START_TIME_DESC", "limit": 200, "offset": 0}
        runs = self.api.post("/flow_runs/filter", json=body).json()
        return [r for r in runs if parameters.items() <= r["parameters"].items()]

    def runs_of_flow(self, flow: str, **parameters) -> list[dict]:
        """Runs of a flow (subflow runs included) whose parameters include `parameters`."""
        body = {"flows": {"name": {"any_": [flow]}}, "sort": "EXPECTED_START_TIME_DESC", "limit": 200, "offset": 0}
        runs = self.api.post("/flow_runs/filter", json=body).json()
        return [r for r in runs if parameters.items() <= r["parameters"].items()]

    def run_logs(self, run_id: str) -> str:
        body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200, "offset": 0}
        return "\n".join(r["message"] for r in self.api.post("/logs/filter", json=body).json())

    def artifacts(self, run_id: str) -> list[dict]:
        body = {"artifacts": {"flow_run_id": {"any_": [run_id]}}, "sort": "CREATED_DESC", "limit": 50, "offset": 0}
        return self.api.post("/artifacts/filter", json=body).json()

    def delete_waiting_runs(self, deployment: str) -> None:
        """Drop a deployment's runs that have not started (the schedule's, and those its triggers created)."""
        for run in self.runs_of(deployment):
            if run["state"]["type"] in ("SCHEDULED", "PENDING"):
                self.api.delete(f"/flow_runs/{run['id']}")

    def crash(self, run_id: str) -> None:
        """What deploy/automations.yaml does to a run whose heartbeats stopped."""
        state = {"type": "CRASHED", "message": "worker killed (test): no heartbeat"}
        response = self.api.post(f"/flow_runs/{run_id}/set_state", json={"state": state, "force": True})
        assert response.status_code in (200, 201), response.text

    def gpu_slots_drain(self, timeout: float = 120) -> int:
        """Slots of `gpu` in use once the last run's process has exited: it releases them after its final state is
        set, so right after Completed they may still be held for a moment."""
        deadline = time.monotonic() + timeout
        while ((used := self.api.get("/v2/concurrency_limits/gpu").json()["active_slots"])
               and time.monotonic() < deadline):
            time.sleep(1)
        return used


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    s = Stack(tmp)
    try:
        start = time.monotonic()
        s.start("server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(s.port)])
        deadline = time.monotonic() + 180
        while True:
            try:
                if s.api.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert s.procs["server"].poll() is None, (s.logs / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "prefect server did not start in 180 s"
            time.sleep(0.5)
        s.timings["server start (s)"] = round(time.monotonic() - start, 1)
        # docs/operate.md: pools and the GPU concurrency limit (three CLI calls at once: each takes seconds to import)
        setup = [["work-pool", "create", "lambda-cpu", "--type", "process"],
                 ["work-pool", "create", "lambda-gpu", "--type", "process"],
                 ["gcl", "create", "gpu", "--limit", "1"]]
        calls = [subprocess.Popen([str(BIN / "prefect"), *a], cwd=ROOT, env=s.env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for a in setup]
        for args, call in zip(setup, calls):
            out, _ = call.communicate(timeout=180)
            assert call.returncode == 0, f"prefect {' '.join(args)}: {out[-2000:]}"
        yield s
    finally:
        s.close()
        print(f"\ne2e timings: {json.dumps(s.timings)}\ne2e logs: {s.logs}")


def _deploy_all(stack: Stack) -> list[str]:
    """`prefect deploy --all`; while a deployment's flow file is not in this checkout yet, the others by name."""
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    present = [d["name"] for d in spec["deployments"]
               if (ROOT / (d["entrypoint"].split(":")[0].replace(".", "/") + ".py")).is_file()]
    if len(present) == len(spec["deployments"]):
        stack.prefect("--no-prompt", "deploy", "--all")
    else:
        stack.prefect("--no-prompt", "deploy", *[a for n in present for a in ("--name", n)])
    return present


@pytest.fixture(scope="module")
def built(stack):
    """Deploy everything, start a worker, run build-dataset on the tiny profile through its deployment."""
    photos = _photos_in_both_splits(stack.tmp / "data", 6)  # inside the deployments' data roots
    # two rejects for the summary's gallery: a file that does not decode, a photo below resolution.min_side
    (photos / "bad").mkdir()
    (photos / "bad" / "empty.jpg").write_bytes(b"")
    write_photos(photos / "small", 1, size=64)
    output = stack.tmp / "data" / "dataset-ui"
    before = (ROOT / "prefect.yaml").read_bytes()
    start = time.monotonic()
    stack.start_worker("worker-build", "lambda-gpu", "build")
    deployed = _deploy_all(stack)
    stack.timings["prefect deploy (s)"] = round(time.monotonic() - start, 1)
    assert (ROOT / "prefect.yaml").read_bytes() == before, "prefect deploy must not rewrite prefect.yaml"
    # The operator sizes the loop for this machine (before the build completes: its trigger copies the parameters).
    write_photos(stack.tmp / "data" / "dreambench" / "dog", 2, size=64)  # a one-subject DreamBench
    for name in RETRAIN:
        deployment = stack.deployment(name)
        response = stack.api.patch(f"/deployments/{deployment['id']}",
                                   json={"parameters": deployment["parameters"] | TINY_LOOP})
        assert response.status_code == 204, response.text
    run_id = stack.run_deployment("build-dataset", {
        "inputs": [str(photos)], "output": str(output), "profile": "tiny", "gpus_per_stage": {},
        "overrides": TINY + ["input.unit_size=3"],
    })
    run = stack.wait(run_id)
    stack.timings["prefect deploy → completed tiny build-dataset run (s)"] = round(time.monotonic() - start, 1)
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{stack.run_logs(run_id)[-4000:]}"
    return {"run_id": run_id, "output": output, "deployed": deployed, "photos": photos}


def _photos_in_both_splits(root: Path, count: int) -> Path:
    """A folder of `count` synthetic photos of which some fall in the train split and some in val (a sample's split
    follows the hash of its path, so of this temporary folder's name): the retraining loop trains and validates on
    them. The first of root/photos-0, photos-1, … that has both."""
    folder = root / "photos-0"
    write_photos(folder, count, size=128)
    for k in range(1, 100):
        splits = {split_of(sample_key(str(p)), 0.8) for p in folder.iterdir()}  # 0.8: split.train_fraction
        if splits == {"train", "val"}:
            return folder
        folder = folder.rename(root / f"photos-{k}")
    raise AssertionError("no folder name gave both splits")


def _registry(stack: Stack) -> dict:
    root = stack.tmp / "runs" / "registry"
    current = root / "current.json"
    return {"current": json.loads(current.read_text()) if current.is_file() else None,
            "runs": sorted(p.stem for p in (root / "priors").glob("*.json"))}


def _completed_build_of(stack: Stack, output: Path) -> str:
    """A build-dataset run of the deployment that completes without a worker (its output written here beforehand):
    the server emits its prefect.flow-run.Completed event as for any build."""
    response = stack.api.post(f"/deployments/{stack.deployment('build-dataset')['id']}/create_flow_run",
                              json={"parameters": {"output": str(output)}, "state": {"type": "RUNNING"}})
    assert response.status_code == 201, response.text
    run_id = response.json()["id"]
    response = stack.api.post(f"/flow_runs/{run_id}/set_state", json={"state": {"type": "COMPLETED"}, "force": True})
    assert response.status_code in (200, 201), response.text
    return run_id


def _triggered(stack: Stack, deployment: str, timeout: float = 300, **parameters) -> dict:
    deadline = time.monotonic() + timeout
    while not (runs := stack.runs_of(deployment, **parameters)):
        assert time.monotonic() < deadline, f"no automation started {deployment} {parameters} in {timeout} s"
        time.sleep(1)
    (run,) = runs
    return run


def test_a_completed_build_runs_the_loop_and_promotes_the_prior(stack, built):
    """The build's Completed event starts retrain-on-new-dataset on the dataset it built: validate → train → evaluate
    → promote; generate's deployment without a prior then uses the promoted prior. ~60 s alone, ~105 s beside another
    pytest-xdist worker: the loop's run starts a Ray, Ray Train and the evaluation's models in processes of its own,
    as on an operator's worker, and generate's run its models."""
    output = str(built["output"])
    stack.start_worker("worker-retrain", "lambda-gpu", "retrain")
    loop = _triggered(stack, "retrain-on-new-dataset", data=output)
    assert loop["work_queue_name"] == "retrain"
    assert loop["parameters"] == stack.deployment("retrain-on-new-dataset")["parameters"] | {"data": output}
    run = stack.wait(loop["id"], timeout=1200)
    logs = stack.run_logs(loop["id"])
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{logs[-4000:]}"
    build_end = stack.flow_run(built["run_id"])["end_time"]
    stack.timings["completed tiny build → promoted prior (s)"] = round(
        (_parse_time(run["end_time"]) - _parse_time(build_end)), 1)
    stack.timings["retrain run: Running → Completed (s)"] = round(run["total_run_time"], 1)
    registry = _registry(stack)
    run_name = f"prior-{run['name']}"
    assert registry["runs"] == [run_name] and registry["current"]["run"] == run_name
    final = registry["current"]["final"]
    assert final == str(stack.tmp / "runs" / run_name / "final") and (Path(final) / "config.json").is_file()
    decision = {a["key"]: a for a in stack.artifacts(loop["id"])}["retrain-promotion"]["data"]
    assert "**no current prior: the first trained prior is promoted**" in decision
    assert "holding 1 slot(s) of 'gpu'" in logs  # training and evaluation went through the `gpu` limit
    # validate-dataset ran first, as a subflow, and published its report
    (check,) = stack.runs_of_flow("validate-dataset", data=output)
    assert check["parent_task_run_id"] and check["state"]["type"] == "COMPLETED"
    assert "✅ valid" in {a["key"]: a for a in stack.artifacts(check["id"])}["validate-dataset-report"]["data"]
    assert stack.gpu_slots_drain() == 0
    # The same event delivered again (a duplicate trigger defers), and `generate` without --prior from the CLI: the
    # same flows, tested in process by tests/test_retrain_flow.py.
    # generate's deployment, whose `prior` parameter defaults to null: the registry's current prior
    dog = sorted((stack.tmp / "data" / "dreambench" / "dog").iterdir())[0]
    generated = stack.tmp / "data" / "generated-deployment"
    stack.start_worker("worker-inference", "lambda-gpu", "inference")
    try:
        run_id = stack.run_deployment("generate", {"prompt": "a dog", "subjects": [f"dog={dog}"], "steps": 2,
                                                   "profile": "tiny", "num_images": 1, "output": str(generated)})
        run = stack.wait(run_id)
    finally:
        stack.stop("worker-inference")
    assert run["parameters"]["prior"] is None
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{stack.run_logs(run_id)[-4000:]}"
    (meta,) = [json.loads(p.read_text()) for p in generated.rglob("*.json")]
    assert final in json.dumps(meta)


def test_an_invalid_dataset_trains_nothing(stack, built):
    """A completed build whose dataset fails validation: the loop it triggers fails at validation with the reason,
    no run directory, no record. (A worse candidate, recorded and not promoted: tests/test_retrain_flow.py.)"""
    try:
        before = _registry(stack)
        corrupt = stack.tmp / "data" / "dataset-corrupt"
        shutil.copytree(built["output"], corrupt)
        next(iter(sorted((corrupt / "shards").glob("*.parquet")))).write_bytes(b"not parquet")
        _completed_build_of(stack, corrupt)
        bad = _triggered(stack, "retrain-on-new-dataset", data=str(corrupt))
        bad = stack.wait(bad["id"], timeout=600)
        assert bad["state"]["type"] == "FAILED", bad["state"]
        assert f"{corrupt}: INVALID" in bad["state"]["message"] and "00000.parquet" in bad["state"]["message"]
        assert "training from step" not in stack.run_logs(bad["id"])
        assert f"prior-{bad['name']}" not in {p.name for p in (stack.tmp / "runs").iterdir()}
        assert _registry(stack) == before
    finally:
        stack.stop("worker-retrain")  # later builds trigger the loop too: its runs wait, and take no `gpu` slot
    assert stack.gpu_slots_drain() == 0


def _parse_time(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def test_deployments_are_registered_as_declared(stack, built):
    names = {d["name"] for d in stack.api.post("/deployments/filter", json={"limit": 50, "offset": 0}).json()}
    assert set(built["deployed"]) <= names
    assert {"build-dataset", "train-prior", "validate-dataset", *RETRAIN} <= names
    train = stack.deployment("train-prior")
    assert train["schedules"] == [] and train["work_pool_name"] == "lambda-gpu" and train["parameters"]["resume"]
    nightly = stack.deployment("retrain-nightly")
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 3 * * *"]
    assert nightly["parameters"]["continue_current"] is True and nightly["work_queue_name"] == "retrain"
    assert train["parameters"]["data"] == str(stack.tmp / "data" / "dataset")  # {{ $LAMBDA_ECLIPSE_DATA }} resolved
    assert train["parameters"]["output"] == str(stack.tmp / "runs" / "prior")
    build = stack.deployment("build-dataset")
    assert build["job_variables"]["command"] == "python deploy/gpu_slot.py"
    assert stack.deployment("validate-dataset")["work_pool_name"] == "lambda-cpu"
    automations = {a["name"] for a in stack.api.post("/automations/filter", json={}).json()}
    assert "retrain on a new dataset" in automations
    # the zombie-run automation of deploy/automations.yaml is accepted by the server
    stack.prefect("automation", "create", "--from-file", str(ROOT / "deploy" / "automations.yaml"))
    assert stack.gpu_slots_drain() == 0  # the completed run gave its GPU slot back


def test_the_built_dataset_validates(built):
    result = subprocess.run([sys.executable, "-m", "flows.cli", "validate-dataset", str(built["output"]),
                             "--no-flow"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


def test_artifacts_render_in_the_prefect_ui(stack, built):
    """Open the run's Artifacts tab in headless Chromium; the funnel table, the contact sheet, the rejects gallery
    and the progress artifact render."""
    if not Path(CHROMIUM).is_file():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    shots = stack.tmp / "screenshots"
    shots.mkdir()
    run_url = f"{stack.url}/runs/flow-run/{built['run_id']}"
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(stack.tmp / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS[1:],
            viewport={"width": 1400, "height": 1200})
        try:
            page = context.new_page()
            page.set_default_timeout(60_000)

            def artifacts_tab():
                page.goto(run_url, wait_until="networkidle")
                page.get_by_text("Artifacts", exact=True).first.click()
                page.get_by_text("build-dataset-summary", exact=True).first.wait_for()

            artifacts_tab()
            for key in ("build-dataset-progress", "build-dataset-shards", "build-dataset-contact-sheet"):
                assert page.get_by_text(key, exact=True).count() >= 1, key
            page.screenshot(path=str(shots / "flow-run-artifacts.png"), full_page=True)

            page.get_by_text("build-dataset-summary", exact=True).first.click()
            funnel = page.locator("table").filter(has_text="white_background")
            funnel.wait_for()
            rows = [" ".join(r.split()) for r in funnel.locator("tr").all_inner_texts()]
            assert rows[0] == "stage in rejected out", rows
            assert [r.split()[0] for r in rows[1:]] == ["decode", "duplicates", "resolution", "white_background",
                                                        "caption", "nouns", "boxes", "box_filters", "masks",
                                                        "mask_filters", "subjects", "crops", "edge", "features"]
            assert rows[1:4] == ["decode 8 1 7", "duplicates 7 0 7", "resolution 7 1 6"], rows
            # the contact sheet is in the artifact itself, so a browser on any machine shows it
            sheet = page.locator('img[alt="contact sheet"]')
            sheet.wait_for()
            assert sheet.evaluate("img => img.complete ? img.naturalWidth : 0") > 100
            page.screenshot(path=str(shots / "funnel.png"), full_page=True)
            # the rejects gallery: the small photo's thumbnail (made on the worker) beside its reason; the empty
            # file's reason alone
            thumb = page.locator('img[alt^="rejected "]')
            thumb.first.wait_for()
            assert thumb.count() == 1 and thumb.first.evaluate("img => img.complete ? img.naturalWidth : 0") == 64
            gallery = page.locator("table").filter(has_text="resolution.min_side=96")
            assert "64×64 px: shorter side 64 < resolution.min_side=96" in gallery.inner_text()
            assert "(no image)" in page.locator("table").filter(has_text="empty.jpg").inner_text()
            thumb.first.scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "rejects-gallery.png"))

            artifacts_tab()
            page.get_by_text("build-dataset-progress", exact=True).first.click()
            page.get_by_text("Progress: 100%").wait_for()
            # the description: shards, the pace over the last minutes (flows/build_watch.py); drawn after the bar
            page.get_by_text(re.compile(r"\d+/\d+ shards complete · [\d.]+ images/s")).first.wait_for()
            page.screenshot(path=str(shots / "progress.png"), full_page=True)
        finally:
            context.close()
    for name in ("flow-run-artifacts.png", "funnel.png", "rejects-gallery.png", "progress.png"):
        assert (shots / name).stat().st_size > 10_000
    print(f"\nscreenshots: {shots}")


def test_bad_parameter_fails_fast_with_the_reason(stack, built):
    # A wrong type never becomes a run: the deployment's parameter schema rejects it with the reason.
    response = stack.api.post(f"/deployments/{stack.deployment('build-dataset')['id']}/create_flow_run",
                              json={"parameters": {"ray_cpus": "many"}})
    assert response.status_code == 409 and "'many' is not of type 'integer'" in response.text
    # A wrong value fails the run before any work, with the reason as its state message.
    output = stack.tmp / "data" / "bad"
    created = time.monotonic()
    photos = built["photos"]
    run_id = stack.run_deployment("build-dataset", {"inputs": [str(photos)], "output": str(output),
                                                    "profile": "huge", "gpus_per_stage": {}})
    run = stack.wait(run_id, timeout=300)
    seconds = time.monotonic() - created
    stack.timings["bad parameter: created → Failed (s)"] = round(seconds, 1)
    assert run["state"]["type"] == "FAILED"
    assert "unknown profile 'huge'; choose one of: tiny, paper, paper-shapes" in run["state"]["message"]
    stack.timings["bad parameter: run time Running → Failed (s)"] = round(run["total_run_time"], 1)
    assert run["total_run_time"] < 60, run  # checked before Ray or any model starts (a build takes minutes here)
    assert not (output / "shards").exists()
    assert stack.gpu_slots_drain() == 0


class _PatientClient(httpx.Client):
    """The server answers 503 while its SQLite database is locked by a burst of writes (workers, events): retry."""

    def request(self, *args, **kwargs) -> httpx.Response:
        for attempt in range(8):
            response = super().request(*args, **kwargs)
            if response.status_code not in (503, 429):
                return response
            time.sleep(0.5 * 2 ** min(attempt, 4))
        return response


def _kill_worker_when(stack: Stack, name: str, ready, timeout: float = 600, tree: int = 3) -> list[psutil.Process]:
    """SIGKILL the worker and everything under it (flow run, Ray) as soon as `ready()` holds, as a dying machine.
    `tree`: the processes expected at least (worker, flow run, Ray's; a single-process training run has no Ray)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert stack.procs[name].poll() is None, "the worker exited by itself"
        assert time.monotonic() < deadline, f"{name}: condition not reached in {timeout} s"
        time.sleep(0.02)
    procs = stack.stop(name, signal.SIGKILL)
    assert len(procs) >= tree, f"the flow run process (and Ray) must have been running under the worker: {procs}"
    assert not [p for p in procs if _alive(p)], "every process of the worker's tree must be gone"
    return procs


def _without_gpu_slot(stack: Stack, deployment: str) -> dict:
    """Job variables that run the deployment without a `gpu` slot (LAMBDA_ECLIPSE_GPU_SLOTS=0): a killed run's lease
    outlives its process by up to the server's 60 s minimum, which a kill test would otherwise wait out before the
    retried run could start. The slot is not what these tests are about (tests/test_gpu_slot.py)."""
    env = stack.deployment(deployment)["job_variables"]["env"]
    return {"env": env | {"LAMBDA_ECLIPSE_GPU_SLOTS": "0"}}


def _assert_shards_whole(root: Path) -> None:
    """Every shard that looks complete is whole (each file hashes as its stats say) and holds no key of another."""
    seen: set[str] = set()
    for shard in complete_shards(root):
        paths = shard_paths(root, shard)
        stats = json.loads(Path(paths["stats"]).read_text())
        for name in ("parquet", "tar", "rejects"):
            assert stats["files"][shard_names(shard)[name]]["sha256"] == sha256_file(paths[name])
        keys = pq.read_table(paths["parquet"], columns=["key"]).column("key").to_pylist()
        assert not seen & set(keys)
        seen |= set(keys)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_killed_worker_restarted_resumes_build_without_redoing_complete_shards(stack, built):
    """The most realistic door of kill → resume for build-dataset (a worker's whole tree SIGKILLed, as a dying
    machine). Costs two flow-run processes with a Ray each (the killed run, its retry) and a worker restart: ~45 s
    alone, 100–140 s beside another pytest-xdist worker."""
    photos = stack.tmp / "data" / "photos-kill"
    write_photos(photos, 24, size=128)
    output = stack.tmp / "data" / "dataset-kill"
    run_id = stack.run_deployment("build-dataset", {
        "inputs": [str(photos)], "output": str(output), "profile": "tiny", "gpus_per_stage": {},
        "overrides": TINY + ["input.unit_size=3"]}, job_variables=_without_gpu_slot(stack, "build-dataset"))

    def first_shard_complete() -> bool:
        _assert_shards_whole(output)  # at no time a partial or duplicated shard: the kill may come at any moment
        return bool(complete_shards(output))

    _kill_worker_when(stack, "worker-build", first_shard_complete)
    _assert_shards_whole(output)
    done = complete_shards(output)
    assert 1 <= len(done) < 8, f"the kill must land mid-run: {len(done)} of 8 shards complete"
    kept = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
            for s in done for p in map(Path, shard_paths(output, s).values())}
    assert stack.flow_run(run_id)["state"]["type"] == "RUNNING"  # nothing is left to report the end

    # Restart the worker; the dead run is marked Crashed (deploy/automations.yaml does it from missing heartbeats)
    # and retried: the same flow run, same parameters (and job variables: no `gpu` slot, so no lease of the killed
    # process to wait out; tests/test_gpu_slot.py covers the slot's lease).
    restart = time.monotonic()
    stack.start_worker("worker-build", "lambda-gpu", "build")
    stack.crash(run_id)
    stack.prefect("flow-run", "retry", run_id)
    run = stack.wait(run_id)
    stack.timings["build-dataset: worker restart → retried run completed (s)"] = round(time.monotonic() - restart, 1)
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{stack.run_logs(run_id)[-4000:]}"
    assert complete_shards(output) == list(range(8))
    for s in done:
        for p in map(Path, shard_paths(output, s).values()):
            assert (p.stat().st_ino, p.stat().st_mtime_ns) == kept[p.name], f"{p.name} was rewritten"
    assert f"8 work units (0 new), {len(done)} shards complete, {8 - len(done)} to build" in stack.run_logs(run_id)
    report = validate(str(output))
    assert report.ok, report.text()
    assert report.totals["rows"] + report.totals["rejected"] == 24
    # each input once, as in an uninterrupted run
    assert sorted(shard_keys(output)) == sorted(sample_key(str(p)) for p in photos.iterdir())
    assert stack.gpu_slots_drain() == 0


def test_killed_train_prior_restarted_resumes_from_its_last_checkpoint(stack, built):
    """Costs two flow-run processes that each start Ray Train (the killed run, its retry) and a worker restart: ~65 s
    alone, ~100 s beside another pytest-xdist worker."""
    data = stack.tmp / "data" / "dataset-kill"  # built by the previous test
    if complete_shards(data) != list(range(8)):  # its Completed event is what this test waits for below
        pytest.skip("needs the dataset the build-dataset kill test completes")
    run_dir = stack.tmp / "runs" / "prior-kill"
    settings = ["train.max_steps=160", "train.batch_size=4", "train.warmup_steps=1", "checkpoint.every=20",
                "checkpoint.keep=100", "val.every=0", "val.batch_size=4", "log.every=10", "data.loader_workers=0",
                "runtime.trainers=1"]
    # The completed build triggered the retraining loop on this dataset (retrain-on-new-dataset): its run waits on the
    # retrain queue, which no worker serves now, so it cannot take the `gpu` slot this test's run needs. Wait for the
    # automation to create it (events are processed asynchronously), then drop it.
    _triggered(stack, "retrain-on-new-dataset", data=str(data))
    stack.delete_waiting_runs("retrain-on-new-dataset")
    assert stack.gpu_slots_drain() == 0
    stack.start_worker("worker-train", "lambda-gpu", "train")
    run_id = stack.run_deployment("train-prior", {"data": str(data), "output": str(run_dir), "profile": "tiny",
                                                  "overrides": settings, "resume": True},
                                  job_variables=_without_gpu_slot(stack, "train-prior"))
    # Ray Train records a checkpoint once it is uploaded whole (a step directory alone may be mid-upload)
    snapshot = run_dir / "checkpoints" / "checkpoint_manager_snapshot.json"
    _kill_worker_when(stack, "worker-train", snapshot.is_file, tree=2)
    saved = sorted(r["checkpoint_dir_name"] for r in json.loads(snapshot.read_text())["checkpoint_results"])
    assert saved and not (run_dir / "final").exists(), "the kill must land mid-training"
    stack.start_worker("worker-train", "lambda-gpu", "train")
    stack.crash(run_id)
    stack.prefect("flow-run", "retry", run_id)
    run = stack.wait(run_id)
    stack.stop("worker-train")
    logs = stack.run_logs(run_id)
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{logs[-4000:]}"
    resumed = re.search(r"resuming from (\S+)", logs)
    assert resumed and Path(resumed.group(1)).name >= saved[-1], logs[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["step"] == 160 and (run_dir / "final").is_dir()
