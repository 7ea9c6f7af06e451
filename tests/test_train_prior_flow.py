"""The train-prior flow end to end: the CLI runs it in this process and the dashboard (metrics table, loss curve)
and the completion event come out; a resumed run goes data-parallel through Ray Train."""

import argparse
import json

import pytest
from PIL import Image

from flows import train_prior as flow_module
from lambda_eclipse.synthetic_features import write_feature_dataset as write_dataset
from prior.cli import add_parser
from prior.model import EclipsePrior
from prior.train import checkpoints, read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
SETTINGS = ["data.workers=0", "train.batch_size=4", "train.warmup_steps=1", "val.every=2", "checkpoint.every=2",
            "log.every=1"]




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
    top = argparse.ArgumentParser(prog="lambda-eclipse")
    add_parser(top.add_subparsers(dest="command"))
    args = top.parse_args(["train-prior", "--data", str(data), "--output", str(run), "--profile", "tiny"]
                          + [a for s in SETTINGS + ["train.max_steps=4"] for a in ("--set", s)])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(flow_module, "emit_event", lambda **kwargs: events.append(kwargs))
        assert args.run(args) == 0
    return data, run, events


def test_cli_run_publishes_the_dashboard_and_the_completion_event(first_run):
    _, run, events = first_run
    assert [e["event"] for e in events] == ["lambda-eclipse.prior.trained"]
    assert events[0]["resource"]["prefect.resource.id"].endswith(str(run))
    assert events[0]["payload"]["step"] == 4 and events[0]["payload"]["final"] == str(run / "final")
    table = _artifact("train-prior-metrics")
    assert [row["step"] for row in table] == [2, 4]
    assert {"train loss", "val loss", "val cosine", "val top1"} <= table[0].keys()
    assert _artifact("train-prior-loss-curve").startswith("data:image/png;base64,")
    assert Image.open(run / "loss_curve.png").size == (720, 420)


def test_a_failed_run_still_publishes_its_curve(first_run, tmp_path, monkeypatch):
    from lambda_eclipse.errors import UserError
    from prior import train as train_module

    real, calls = train_module.prior_loss, []

    def nan_in_step_3(*args, **kwargs):
        calls.append(1)
        losses = real(*args, **kwargs)
        return losses | {"total": losses["total"] * float("nan")} if len(calls) == 3 else losses

    monkeypatch.setattr(train_module, "prior_loss", nan_in_step_3)
    with pytest.raises(UserError, match="NaN or infinite between steps 2 and 3"):
        settings = SETTINGS + ["train.max_steps=5", "val.every=0"]
        flow_module.train_prior(data=str(first_run[0]), output=str(tmp_path), overrides=settings)
    assert (tmp_path / "loss_curve.png").is_file()


def test_data_parallel_resume_through_ray_train(first_run, ray_local, monkeypatch):
    """Two Ray Train workers (DistributedDataParallel, gloo on CPU) continue the single-process run from step 4."""
    data, run, _ = first_run
    events = []
    monkeypatch.setattr(flow_module, "emit_event", lambda **kwargs: events.append(kwargs))
    summary = flow_module.train_prior(data=str(data), output=str(run), profile="tiny", resume=True,
                                      overrides=SETTINGS + ["train.max_steps=6", "runtime.workers=2"])
    assert summary["step"] == 6 and events[0]["payload"]["step"] == 6
    assert [p.name for p in checkpoints(run)][-2:] == ["step-00000004", "step-00000006"]
    assert [r["step"] for r in read_metrics(run) if r["split"] == "val"] == [2, 4, 6]
    assert EclipsePrior.from_pretrained(summary["final"]).config["num_layers"] == 2
