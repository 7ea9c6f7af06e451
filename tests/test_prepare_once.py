"""Each command prepares its plan once (flows/handed.py): the CLI prepares it before Prefect starts and hands it to
the flow as the flow's `handed` parameter, so the flow does not list the inputs or read the dataset again, and the
run records the parameters as the plan resolved them with a small summary of the plan; a deployment's raw parameters
go through the same preparation once, in the flow."""

import json
from uuid import UUID

import pytest
from conftest import logs_of_latest_run

from lambda_eclipse.synthetic import write_photos
from storage.synthetic_features import write_feature_dataset

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness", "ray_local")]


def _counted(monkeypatch, module, name: str, *more) -> list:
    """Count the calls of `module.name` (and of the same function bound in `more` modules): each call's result."""
    calls: list = []
    real = getattr(module, name)

    def counting(*args, **kwargs):
        calls.append(real(*args, **kwargs))
        return calls[-1]

    for target in (module, *more):
        monkeypatch.setattr(target, name, counting)
    return calls


def _runs(monkeypatch, module, name: str) -> list:
    """Spy on a flow's body `module.name` (run_build, run_train): per call, the plan it ran on and its flow run's id."""
    runs: list = []
    real = getattr(module, name)

    def running(plan, *args, **kwargs):
        from prefect.runtime import flow_run

        runs.append((plan, flow_run.get_id()))
        return real(plan, *args, **kwargs)

    monkeypatch.setattr(module, name, running)
    return runs


def _recorded(run_id: str) -> dict:
    """The parameters Prefect recorded for a flow run, read back through its API."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(run_id)).parameters


def test_build_dataset_lists_its_inputs_once(tmp_path, monkeypatch):
    from prefect.utilities.callables import parameter_schema

    import flows.build_dataset
    import tasks.plan
    from flows.cli import main

    photos = tmp_path / "photos"
    write_photos(photos, 2, size=128)
    listed = _counted(monkeypatch, tasks.plan, "list_inputs")
    planned = _counted(monkeypatch, tasks.plan, "prepare_build", flows.build_dataset)
    ran = _runs(monkeypatch, flows.build_dataset, "run_build")
    code = main(["build-dataset", "--input", str(photos), "--output", str(tmp_path / "data"),
                 "--set", "resolution.min_side=96"])
    assert code == 0 and len(listed) == 1 and len(planned) == 1  # the CLI's plan; the flow ran on it
    ((plan, run_id),) = ran
    assert plan is planned[0]  # the very plan, through Prefect's parameter validation

    # The run recorded the config as the plan resolved it, and a summary of the plan, not its units.
    parameters = _recorded(run_id)
    summary = parameters["handed"]["summary"]
    assert parameters["config"] == json.loads(json.dumps(plan.cfg.to_dict()))
    assert parameters["config"]["resolution"]["min_side"] == 96
    dataset_hash = json.loads((tmp_path / "data" / "dataset.json").read_text())["config_hash"]
    assert summary["config_hash"] == plan.cfg.content_hash() == dataset_hash
    assert summary["units"] == summary["todo"] == 1 and summary["complete"] == 0
    assert len(json.dumps(parameters["handed"])) < 500 and len(json.dumps(parameters)) < 4000
    assert "handed" not in parameter_schema(flows.build_dataset.build_dataset.fn).properties  # deployments: no field

    from flows.build_dataset import build_dataset

    listed.clear()  # a deployment's run: raw parameters, prepared once in the flow
    planned.clear()
    # with old names a deployment may still pass for a release: the parameter `workers`, the key runtime.workers
    summary = build_dataset(inputs=[str(photos)], output=str(tmp_path / "data"),
                            overrides=["resolution.min_side=96", "runtime.workers=1"], workers=1)
    assert summary["shards"] == 1 and len(listed) == 1 and len(planned) == 1
    assert ran[1][0] is planned[0] and _recorded(ran[1][1])["handed"] is None
    assert planned[0].cfg.runtime.ray_cpus == 1
    logs_of_latest_run("build-dataset", "the parameter `workers` is deprecated and goes in the next release; pass "
                       "`ray_cpus` instead", "config key 'runtime.workers' is deprecated and goes in the next "
                       "release; set 'runtime.ray_cpus' instead")
    assert "workers" not in parameter_schema(flows.build_dataset.build_dataset.fn).properties


def test_train_prior_reads_its_dataset_once(tmp_path, monkeypatch):
    import flows.train_prior
    import prior.prepare
    from flows.cli import main
    from flows.handed import config_hash

    data = write_feature_dataset(tmp_path / "data", [(4, 1), (4, 1)])
    prepared = _counted(monkeypatch, prior.prepare, "prepare_training", flows.train_prior)
    ran = _runs(monkeypatch, flows.train_prior, "run_train")
    code = main(["train-prior", "--data", str(data), "--output", str(tmp_path / "run"),  # the profile: the dataset's
                 *[a for s in ("data.loader_workers=0", "train.batch_size=4", "train.max_steps=1", "val.every=0",
                               "log.every=1") for a in ("--set", s)]])
    assert code == 0 and len(prepared) == 1
    ((job, run_id),) = ran
    assert job is prepared[0]  # the flow trained the job the CLI prepared

    # The run recorded the profile as resolved (None → the dataset's) and a summary of the job.
    parameters = _recorded(run_id)
    summary = parameters["handed"]["summary"]
    assert parameters["profile"] == summary["profile"] == "tiny"
    assert summary["config_hash"] == config_hash(job.cfg) and summary["train_shards"] == summary["val_shards"] == 2
    assert len(json.dumps(parameters)) < 1000
