"""The retrain flow in this process (tiny profile, real models): validate → train → evaluate → promote into a prior
registry; a worse candidate is recorded but not promoted, its current prior re-evaluated like for like; an invalid
dataset stops the run before training; `generate` without --prior uses the promoted prior."""

import json

import pytest

from flows.retrain import gpu_slots, retrain, scores
from lambda_eclipse.cli import main
from lambda_eclipse.errors import UserError
from lambda_eclipse.synthetic import write_photos
from lambda_eclipse.synthetic_features import write_feature_dataset
from prior.registry import Registry
from storage.validate import DatasetInvalid

# ray_local: training, evaluation and generate join the session's Ray instead of each starting and stopping its own
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread", "prefect_harness", "ray_local")]
TRAIN = ["data.workers=0", "train.batch_size=4", "train.warmup_steps=1", "val.every=0", "checkpoint.every=4",
         "log.every=2", "train.max_steps=4", "runtime.workers=1"]
EVAL = ["evaluate.max_prompts=1", "evaluate.images_per_prompt=1", "evaluate.steps=2"]


def _artifact(key: str) -> str:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        body = {"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC", "limit": 1}
        (artifact,) = client.request("POST", "/artifacts/filter", json=body).json()
    return artifact["data"]


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrain")
    write_photos(root / "dreambench" / "dog", 2, size=64)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LAMBDA_ECLIPSE_RUNS", str(root / "runs"))
        patch.delenv("LAMBDA_ECLIPSE_REGISTRY", raising=False)
        patch.delenv("LAMBDA_ECLIPSE_GPU_SLOTS", raising=False)
        data = write_feature_dataset(root / "dataset", [(6, 2), (5, 2)])
        first = retrain(runs=str(root / "runs"), benchmark_data=str(root / "dreambench"), data=str(data),
                        overrides=TRAIN, eval_overrides=EVAL, tolerance=0.01)
        yield {"root": root, "data": data, "first": first, "reg": Registry.open()}


def test_the_first_prior_is_trained_evaluated_and_promoted(loop):
    first, reg = loop["first"], loop["reg"]
    assert first["promoted"] and first["reason"] == "no current prior: the first trained prior is promoted"
    assert first["steps"] == 4 and first["run"].startswith("prior-")
    (record,) = reg.records()
    current = reg.current()
    assert current is not None and current["run"] == record["run"] == first["run"]
    assert record["final"] == str(loop["root"] / "runs" / first["run"] / "final") == first["final"]
    assert record["data"] == str(loop["data"]) and record["profile"] == "tiny" and record["started_from"] is None
    summary = json.loads((loop["root"] / "runs" / first["run"] / "evaluation" / "summary.json").read_text())
    assert record["metrics"] == scores(summary["summary"]) and set(record["metrics"]) == {"dino", "clip_i", "clip_t"}
    assert record["evaluation"]["settings"] == {"benchmark": "dreambench", "data": str(loop["root"] / "dreambench"),
                                                "profile": "tiny", "overrides": EVAL}
    text = _artifact("retrain-promotion")
    assert "**no current prior: the first trained prior is promoted**" in text and "| DINO |" in text


def test_generate_without_prior_uses_the_current_prior(loop, monkeypatch, capsys):
    monkeypatch.setenv("LAMBDA_ECLIPSE_RUNS", str(loop["root"] / "runs"))
    output = loop["root"] / "generated"
    dog = sorted((loop["root"] / "dreambench" / "dog").iterdir())[0]
    assert main(["generate", "--prompt", "a dog", "--subject", f"dog={dog}", "--steps", "2", "--output",
                 str(output)]) == 0
    (meta,) = [json.loads(p.read_text()) for p in output.rglob("*.json")]
    assert loop["first"]["final"] in json.dumps(meta)


def test_a_worse_candidate_is_recorded_but_not_promoted(loop):
    first = loop["first"]
    # a negative tolerance asks every metric to beat the current prior's by 1 (cosines cannot): never promoted. The
    # evaluation settings differ from the current prior's, so it is evaluated again with these.
    second = retrain(runs=str(loop["root"] / "runs"), benchmark_data=str(loop["root"] / "dreambench"),
                     data=str(loop["data"]), overrides=TRAIN, eval_overrides=EVAL + ["evaluate.seed=1"],
                     tolerance=-1.0)
    assert not second["promoted"] and second["reason"].startswith("not promoted: DINO, CLIP-I, CLIP-T below")
    reg = loop["reg"]
    assert [r["run"] for r in reg.records()] == [first["run"], second["run"]]
    assert reg.current()["run"] == first["run"]
    again = loop["root"] / "runs" / second["run"] / f"evaluation-{first['run']}" / "summary.json"
    assert second["current_metrics"] == scores(json.loads(again.read_text())["summary"])
    assert "❌" in _artifact("retrain-promotion")


def test_nightly_continues_the_current_prior_for_steps_per_run_more_steps(loop):
    first = loop["first"]
    overrides = [o for o in TRAIN if not o.startswith("train.max_steps=")] + ["train.steps_per_run=2"]
    nightly = retrain(runs=str(loop["root"] / "runs"), benchmark_data=str(loop["root"] / "dreambench"),
                      continue_current=True, check_dataset=False, overrides=overrides, eval_overrides=EVAL,
                      tolerance=1.0)
    record = loop["reg"].get(nightly["run"])
    assert record["started_from"] == first["run"] and record["data"] == str(loop["data"])  # the current's dataset
    assert nightly["steps"] == first["steps"] + 2 and nightly["run"] != first["run"]
    assert nightly["promoted"] and loop["reg"].current()["run"] == nightly["run"]  # tolerance 1: any cosine passes


def test_an_invalid_dataset_trains_nothing(loop):
    bad = write_feature_dataset(loop["root"] / "bad", [(6, 2)])
    (bad / "shards" / "00000.parquet").write_bytes(b"not parquet")
    before = sorted(p.name for p in (loop["root"] / "runs").iterdir())
    with pytest.raises(DatasetInvalid):
        retrain(runs=str(loop["root"] / "runs"), benchmark_data=str(loop["root"] / "dreambench"), data=str(bad),
                overrides=TRAIN, eval_overrides=EVAL)
    assert sorted(p.name for p in (loop["root"] / "runs").iterdir()) == before  # no run directory, no record


def test_nightly_without_a_current_prior_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="continue_current: the prior registry .* has no current prior to continue"):
        retrain(runs=str(tmp_path), benchmark_data=str(tmp_path), continue_current=True,
                registry=str(tmp_path / "registry"))


def test_a_missing_gpu_limit_is_named_with_the_command_to_create_it(monkeypatch):
    monkeypatch.setenv("LAMBDA_ECLIPSE_GPU_SLOTS", "1")
    monkeypatch.setenv("LAMBDA_ECLIPSE_GPU_LIMIT", "gpu-missing-in-this-test")
    with pytest.raises(UserError, match=r"the global concurrency limit 'gpu-missing-in-this-test' does not exist: "
                                        r"create it with `prefect gcl create gpu-missing-in-this-test --limit N`"):
        with gpu_slots("train-prior"):
            pass
