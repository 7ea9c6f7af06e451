"""The train-prior flow end to end: the CLI runs it (training on Ray Train workers) and the dashboard (metrics table,
loss curve) and the completion event come out; a new run started from it goes data-parallel, and the flow returns
what the retraining loop needs."""

import argparse
import json

import pytest
from conftest import logs_of_latest_run
from PIL import Image

from flows import train_prior as flow_module
from flows.commands.train_prior import add_parser
from prior.model import EclipsePrior
from storage.fs import name
from storage.run_dir import checkpoints, read_metrics
from storage.synthetic_features import write_feature_dataset as write_dataset

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]
SETTINGS = ["data.loader_workers=0", "train.batch_size=4", "train.warmup_steps=1", "val.every=2", "checkpoint.every=2",
            "log.every=1"]
# lines of the training worker that reach the run log
PROGRESS = ("[trainer 0] training from step 0 to 4 on 1 × cpu, global batch 4 (4 per trainer)",
            "[trainer 0] step 4: checkpoint ", "[trainer 0] step 4 val: loss ")




def _artifact(key: str):
    """The data of the latest artifact `key`, read through the REST API: prefect 3.8.8's `read_artifacts` sends null
    for the filters it is not given, which its server rejects (422)."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        body = {"artifacts": {"key": {"any_": [key]}}, "sort": "UPDATED_DESC", "limit": 1}
        (artifact,) = client.request("POST", "/artifacts/filter", json=body).json()
    return json.loads(artifact["data"]) if artifact["type"] == "table" else artifact["data"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, prefect_harness):
    """The CLI's run of 4 steps in this process; the emitted events are captured."""
    root = tmp_path_factory.mktemp("train-flow")
    data, run, events = write_dataset(root / "data", [(6, 2), (5, 2)]), root / "run", []
    meta = json.loads((data / "dataset.json").read_text())
    (data / "dataset.json").write_text(json.dumps(meta | {"config_hash": "0123abcd"}))  # as build-dataset writes it
    top = argparse.ArgumentParser(prog="lambda-eclipse")
    add_parser(top.add_subparsers(dest="command"))
    args = top.parse_args(["train-prior", "--data", str(data), "--output", str(run), "--profile", "tiny"]
                          + [a for s in SETTINGS + ["train.max_steps=4"] for a in ("--set", s)])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(flow_module, "emit_event", lambda **kwargs: events.append(kwargs))
        assert args.run(args) == 0
    return data, run, events


def test_the_training_workers_progress_reaches_the_run_log(first_run):
    """The trainers run in Ray workers; their lines come to the flow's run log through lambda_eclipse/ray_logs.py."""
    logs = logs_of_latest_run("train-prior", *PROGRESS)  # first_run's: this module's first test
    assert all(line in logs for line in PROGRESS), logs


def test_cli_run_publishes_the_dashboard_and_the_completion_event(first_run):
    _, run, events = first_run
    assert [e["event"] for e in events] == ["lambda-eclipse.prior.trained"]
    assert events[0]["resource"]["prefect.resource.id"].endswith(str(run))
    payload = events[0]["payload"]
    assert payload["step"] == 4 and payload["final"] == str(run / "final") and payload["run_dir"] == str(run)
    assert payload["metrics"] == payload["val"] and payload["metrics"]["step"] == 4
    table = _artifact("train-prior-metrics")
    assert [row["step"] for row in table] == [2, 4]
    assert {"train loss", "val loss", "val cosine", "val top1"} <= table[0].keys()
    assert _artifact("train-prior-loss-curve").startswith("data:image/png;base64,")
    assert Image.open(run / "loss_curve.png").size == (720, 420)


def test_a_failed_run_still_publishes_its_curve(first_run, tmp_path):
    from lambda_eclipse.errors import UserError

    settings = SETTINGS + ["train.max_steps=20", "val.every=0", "train.lr=1e30", "train.warmup_steps=0"]
    with pytest.raises(UserError, match="NaN or infinite between steps"):
        flow_module.train_prior(data=str(first_run[0]), output=str(tmp_path), overrides=settings)
    assert (tmp_path / "loss_curve.png").is_file()


def test_a_new_run_from_the_first_goes_data_parallel_and_returns_what_retraining_needs(first_run, tmp_path,
                                                                                       monkeypatch):
    """init_from: the first run's state (step 4) continues for train.steps_per_run=2 steps on two Ray Train workers
    (DistributedDataParallel, gloo on CPU) in a new run directory."""
    data, run, _ = first_run
    events = []
    monkeypatch.setattr(flow_module, "emit_event", lambda **kwargs: events.append(kwargs))
    new = tmp_path / "new"
    result = flow_module.train_prior(data=str(data), output=str(new), init_from=str(run),
                                     overrides=SETTINGS + ["train.steps_per_run=2", "runtime.trainers=2"])
    assert result["step"] == 6 and events[0]["payload"] == result
    assert result["run_dir"] == str(new) and result["final"] == str(new / "final") and result["data"] == str(data)
    assert result["dataset_hash"] == "0123abcd"
    assert result["metrics"]["step"] == 6 and {"loss", "cosine", "top1"} <= result["metrics"].keys()
    assert result["started_from"] == str(run / "checkpoints" / "step-00000004")
    assert [name(p) for p in checkpoints(new)] == ["step-00000006"]
    assert [r["step"] for r in read_metrics(new) if r["split"] == "val"] == [6]
    assert [name(p) for p in checkpoints(run)][-1] == "step-00000004"  # the first run is only read
    assert EclipsePrior.from_pretrained(result["final"]).config["num_layers"] == 2


def test_the_command_logs_each_line_once_in_prefects_format(tmp_path, prefect_api_url, ray_address):
    """As a user runs it, in a process of its own: a trainer's line shows once (the run logger's, not also its own
    logger's through the root's console handler), in Prefect's console format, and nothing logs an ERROR."""
    import os
    import subprocess
    import sys

    data = write_dataset(tmp_path / "data", [(4, 1), (4, 1)])
    env = os.environ | {"PREFECT_API_URL": prefect_api_url, "RAY_ADDRESS": ray_address}
    settings = [a for s in [*SETTINGS, "train.max_steps=4"] for a in ("--set", s)]
    run = subprocess.run([sys.executable, "-m", "flows.cli", "train-prior", "--data", str(data), "--output",
                          str(tmp_path / "run"), *settings], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = (run.stdout + run.stderr).splitlines()
    for progress in PROGRESS:
        shown = [line for line in lines if progress in line]
        assert len(shown) == 1 and " | INFO    | Task run " in shown[0], shown
    assert [line for line in lines if line.split(":")[0] in ("DEBUG", "INFO", "WARNING", "ERROR")] == []
    assert [line for line in lines if "ERROR" in line or "Traceback" in line] == []
