"""Each command prepares its plan once (flows/prepared.py): the CLI prepares it before Prefect starts and hands it to
the flow, which does not list the inputs or read the dataset again; a deployment's raw parameters go through the
same preparation once, in the flow."""

import pytest

from lambda_eclipse.synthetic import write_photos
from storage.synthetic_features import write_feature_dataset

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness", "ray_local")]


def _counted(monkeypatch, module, name: str, *more) -> list:
    """Count the calls of `module.name` (and of the same function bound in `more` modules)."""
    calls: list = []
    real = getattr(module, name)

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    for target in (module, *more):
        monkeypatch.setattr(target, name, counting)
    return calls


def test_build_dataset_lists_its_inputs_once(tmp_path, monkeypatch):
    import tasks.plan
    from flows.cli import main

    photos = tmp_path / "photos"
    write_photos(photos, 2, size=128)
    listed = _counted(monkeypatch, tasks.plan, "list_inputs")
    code = main(["build-dataset", "--input", str(photos), "--output", str(tmp_path / "data"),
                 "--set", "resolution.min_side=96"])
    assert code == 0 and len(listed) == 1  # the CLI's plan; the flow ran on it

    from flows.build_dataset import build_dataset

    listed.clear()  # a deployment's run: raw parameters, prepared once in the flow
    summary = build_dataset(inputs=[str(photos)], output=str(tmp_path / "data"),
                            overrides=["resolution.min_side=96"])
    assert summary["shards"] == 1 and len(listed) == 1


def test_train_prior_reads_its_dataset_once(tmp_path, monkeypatch):
    import flows.train_prior
    import prior.train
    from flows.cli import main

    data = write_feature_dataset(tmp_path / "data", [(4, 1), (4, 1)])
    prepared = _counted(monkeypatch, prior.train, "prepare_training", flows.train_prior)
    code = main(["train-prior", "--data", str(data), "--output", str(tmp_path / "run"), "--profile", "tiny",
                 *[a for s in ("data.workers=0", "train.batch_size=4", "train.max_steps=1", "val.every=0",
                               "log.every=1") for a in ("--set", s)]])
    assert code == 0 and len(prepared) == 1
