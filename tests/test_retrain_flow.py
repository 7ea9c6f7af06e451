"""The retrain flow in this process (tiny profile, real models): validate → train → evaluate → promote into a prior
registry; a worse candidate is recorded but not promoted, its current prior re-evaluated like for like; an invalid
dataset stops the run before training; `generate` without --prior uses the promoted prior."""

import json

import pytest
from conftest import RETRAIN_EVAL, RETRAIN_TRAIN, latest_artifact, logs_of_latest_run

from flows.cli import main
from flows.retrain import gpu_slots, retrain, scores
from lambda_eclipse.errors import UserError
from lambda_eclipse.synthetic import write_photos
from prior.config import load_train_config
from prior.registry import Registry, dataset_identity, training_key
from storage.synthetic_features import write_feature_dataset
from storage.validate import DatasetInvalid

# ray_local: training, evaluation and generate join the session's Ray instead of each starting and stopping its own
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread", "prefect_harness", "ray_local")]


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
                        overrides=RETRAIN_TRAIN, eval_overrides=RETRAIN_EVAL, tolerance=0.01)
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
    # how it was trained (prior/job.py's training_record): the loss settings, the global batch
    # τ = 0.1·d for the synthetic 32-d embeddings (loss.tau=0, the default)
    assert record["training"]["loss"] == {"lam": 0.2, "tau": pytest.approx(3.2), "reduction": "mean",
                                          "similarity": "dot"}
    assert record["training"]["batch"]["negatives"] == "global batch" and record["training"]["edge"] is None
    summary = json.loads((loop["root"] / "runs" / first["run"] / "evaluation" / "summary.json").read_text())
    assert record["metrics"] == scores(summary["summary"]) and set(record["metrics"]) == {"dino", "clip_i", "clip_t"}
    assert record["evaluation"]["settings"] == {"benchmark": "dreambench", "data": str(loop["root"] / "dreambench"),
                                                "profile": "tiny", "overrides": RETRAIN_EVAL}
    text = latest_artifact("retrain-promotion")
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
    # another training config (a seed): another candidate; the same one would defer to the first run (below)
    second = retrain(runs=str(loop["root"] / "runs"), benchmark_data=str(loop["root"] / "dreambench"),
                     data=str(loop["data"]), overrides=RETRAIN_TRAIN + ["train.seed=1"],
                     eval_overrides=RETRAIN_EVAL + ["evaluate.seed=1"], tolerance=-1.0)
    assert not second["promoted"] and second["reason"].startswith("not promoted: DINO, CLIP-I, CLIP-T below")
    reg = loop["reg"]
    assert [r["run"] for r in reg.records()] == [first["run"], second["run"]]
    assert reg.current()["run"] == first["run"]
    again = loop["root"] / "runs" / second["run"] / f"evaluation-{first['run']}" / "summary.json"
    assert second["current_metrics"] == scores(json.loads(again.read_text())["summary"])
    assert "❌" in latest_artifact("retrain-promotion")


def test_nightly_continues_the_current_prior_for_steps_per_run_more_steps(loop):
    first = loop["first"]
    overrides = [o for o in RETRAIN_TRAIN if not o.startswith("train.max_steps=")] + ["train.steps_per_run=2"]
    nightly = retrain(runs=str(loop["root"] / "runs"), benchmark_data=str(loop["root"] / "dreambench"),
                      continue_current=True, check_dataset=False, overrides=overrides, eval_overrides=RETRAIN_EVAL,
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
                overrides=RETRAIN_TRAIN, eval_overrides=RETRAIN_EVAL)
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


def test_a_duplicate_trigger_defers_to_the_run_that_trained_the_candidate(loop):
    """The Completed event of one build delivered twice: the second retrain run, on the same dataset with the same
    training config, trains nothing and names the run it defers to."""
    first, reg = loop["first"], loop["reg"]
    before, dirs = [r["run"] for r in reg.records()], sorted((loop["root"] / "runs").iterdir())
    again = retrain(runs=str(loop["root"] / "runs"), benchmark_data=str(loop["root"] / "dreambench"),
                    data=str(loop["data"]), overrides=RETRAIN_TRAIN, eval_overrides=RETRAIN_EVAL, tolerance=0.01)
    holder = first["run"].removeprefix("prior-")
    assert again["deferred_to"] == holder and again["run"] == first["run"] and not again["promoted"]
    assert again["final"] == first["final"] and again["metrics"] == first["metrics"]
    assert again["reason"].startswith(f"deferred: dataset {loop['data']} with this training config is already trained "
                                      f"by retrain run {holder} (flow run ")
    assert [r["run"] for r in reg.records()] == before  # no new candidate, no run directory
    assert sorted((loop["root"] / "runs").iterdir()) == dirs
    assert f"is already trained by retrain run {holder}" in logs_of_latest_run("retrain", "deferred: ")


def _claim_by(reg: Registry, data, overrides: list[str], state) -> str:
    """A claim on the candidate (data, overrides) by a flow run in `state`, made through the API: another retrain
    run that took the event first."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        run = client.create_flow_run(retrain, name="other-run", state=state)
    key = training_key(dataset_identity(str(data)), None, load_train_config(None, overrides).to_dict(), None)
    reg.claim(key, {"run": "prior-other-run", "flow_run": "other-run", "flow_run_id": str(run.id), "data": str(data)})
    return str(run.id)


def test_a_trigger_while_the_candidate_trains_defers_and_a_crashed_claim_is_taken_over(loop):
    from prefect import get_client
    from prefect.states import Crashed, Running

    reg, overrides = loop["reg"], RETRAIN_TRAIN + ["train.seed=2"]
    other = _claim_by(reg, loop["data"], overrides, Running())
    before = [r["run"] for r in reg.records()]

    def trigger() -> dict:
        return retrain(runs=str(loop["root"] / "runs"), benchmark_data=str(loop["root"] / "dreambench"),
                       data=str(loop["data"]), overrides=overrides, eval_overrides=RETRAIN_EVAL, tolerance=-1.0)

    waiting = trigger()
    assert waiting["deferred_to"] == "other-run" and waiting["final"] is None
    assert waiting["reason"].startswith(f"deferred: dataset {loop['data']} with this training config is being trained "
                                        f"by retrain run other-run (flow run {other}, running)")
    assert [r["run"] for r in reg.records()] == before
    with get_client(sync_client=True) as client:  # the other run crashed before it trained anything
        client.set_flow_run_state(other, Crashed(), force=True)
    taken = trigger()
    assert taken["deferred_to"] is None and taken["steps"] == 4 and taken["run"] not in before
    assert [r["run"] for r in reg.records()] == [*before, taken["run"]]
    assert "retrain run other-run claimed this candidate" in logs_of_latest_run("retrain", "is crashed: this run "
                                                                                           "trains it")
