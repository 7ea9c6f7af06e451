"""The prior registry (prior/registry.py): records, the `current` pointer, the promotion rule, where it lives (a folder
or an fsspec URL), `resolve_prior` for generate/evaluate, and `lambda-eclipse priors list|promote`."""

import json
import subprocess
import sys

import pytest

from flows.cli import main
from lambda_eclipse.errors import UserError
from prior.registry import Registry, decide, decision_markdown, registry_location, resolve_prior

GOOD = {"dino": 0.60, "clip_i": 0.78, "clip_t": 0.30}


def record(run, steps=100, metrics=GOOD, trained_at="2026-11-30T10:00:00+00:00", **extra):
    return {"run": run, "run_dir": f"/runs/{run}", "final": f"/runs/{run}/final", "data": "/data/dataset",
            "dataset_hash": "0123456789abcdef0123", "profile": "tiny", "steps": steps, "metrics": metrics,
            "trained_at": trained_at, "started_from": None} | extra


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.delenv("LAMBDA_ECLIPSE_REGISTRY", raising=False)
    monkeypatch.setenv("LAMBDA_ECLIPSE_RUNS", str(tmp_path))
    return tmp_path


# -- the promotion rule --------------------------------------------------------------------------------------------

def test_the_first_prior_is_promoted():
    decision = decide(GOOD, None, 0.01)
    assert decision.promote and decision.reason == "no current prior: the first trained prior is promoted"
    assert [r["metric"] for r in decision.rows] == ["DINO", "CLIP-I", "CLIP-T"]


def test_a_worse_candidate_is_not_promoted_and_the_failing_metrics_are_named():
    worse = GOOD | {"dino": 0.55, "clip_t": 0.289}
    decision = decide(worse, GOOD, 0.01)
    assert not decision.promote
    assert decision.reason == "not promoted: DINO, CLIP-T below the current prior's − 0.01"
    assert [r["ok"] for r in decision.rows] == [False, True, False]
    assert decision.rows[0]["floor"] == pytest.approx(0.59)


def test_a_candidate_within_the_tolerance_is_promoted():
    within = {"dino": 0.591, "clip_i": 0.78, "clip_t": 0.35}
    assert decide(within, GOOD, 0.01).promote
    assert not decide(within, GOOD, 0.0).promote  # 0: never worse on any metric
    negative = decide(GOOD, GOOD, -0.01)  # negative: every metric must improve by that much
    assert negative.reason == "not promoted: DINO, CLIP-I, CLIP-T below the current prior's + 0.01"


def test_a_candidate_without_scores_is_an_error():
    with pytest.raises(UserError, match="the candidate has no CLIP-T score"):
        decide({"dino": 0.6, "clip_i": 0.7}, GOOD, 0.01)


def test_decision_markdown_compares_metric_by_metric():
    decision = decide(GOOD | {"dino": 0.5}, GOOD, 0.05)
    text = decision_markdown(decision, record("prior-b", 200), record("prior-a"), 0.05)
    assert "**not promoted: DINO below the current prior's − 0.05**" in text
    assert "candidate `prior-b` (step 200, dataset `/data/dataset`) against current `prior-a` (step 100)" in text
    assert "| DINO | 0.5000 | 0.6000 | 0.5500 | ❌ |" in text and "| CLIP-I | 0.7800 | 0.7800 | 0.7300 | ✅ |" in text


# -- the registry ----------------------------------------------------------------------------------------------------

def test_records_current_and_promotion(runs):
    reg = Registry.open()
    assert reg.root == runs / "registry" and reg.records() == [] and reg.current() is None
    reg.put(record("prior-b", trained_at="2026-11-30T11:00:00+00:00"))
    reg.put(record("prior-a"))
    assert [r["run"] for r in reg.records()] == ["prior-a", "prior-b"]  # oldest first
    first = reg.promote("prior-a", by="test", reason="first")
    assert first["previous"] is None and first["final"] == "/runs/prior-a/final"
    second = reg.promote("prior-b", by="test", reason="better")
    assert second["previous"] == "prior-a"
    current = reg.current()
    assert current is not None and current["run"] == "prior-b" and current["promotion"]["reason"] == "better"
    assert [p["reason"] for p in reg.get("prior-b")["promotions"]] == ["better"]
    pointer = json.loads((runs / "registry" / "current.json").read_text())
    assert pointer["run"] == "prior-b"
    assert not list((runs / "registry").rglob(".*.tmp"))  # written atomically: nothing staged is left


def test_unknown_run_and_empty_registry_are_clear_errors(runs):
    reg = Registry.open()
    with pytest.raises(UserError, match=r"the prior registry .*registry is empty: no prior has been trained"):
        reg.promote("prior-x", by="test", reason="")
    reg.put(record("prior-a"))
    with pytest.raises(UserError, match=r"no prior 'prior-x' in the registry .*; known: prior-a \(`lambda-eclipse "
                                        r"priors list`\)"):
        reg.get("prior-x")
    with pytest.raises(UserError, match="no prior '../prior-a'"):
        reg.get("../prior-a")


def test_the_registry_can_live_at_a_url(monkeypatch):
    monkeypatch.setenv("LAMBDA_ECLIPSE_REGISTRY", "memory://lambda/registry")
    reg = Registry.open()
    assert reg.root == "memory://lambda/registry"
    reg.put(record("prior-a"))
    reg.promote("prior-a", by="test", reason="first")
    assert resolve_prior(None) == "/runs/prior-a/final"
    current = Registry("memory://lambda/registry").current()
    assert current is not None and current["run"] == "prior-a"


def test_location_order(monkeypatch, tmp_path):
    monkeypatch.delenv("LAMBDA_ECLIPSE_REGISTRY", raising=False)
    monkeypatch.delenv("LAMBDA_ECLIPSE_RUNS", raising=False)
    with pytest.raises(UserError, match=r"no prior registry: set LAMBDA_ECLIPSE_RUNS \(the registry is then "
                                        r"\$LAMBDA_ECLIPSE_RUNS/registry\) or LAMBDA_ECLIPSE_REGISTRY"):
        registry_location()
    monkeypatch.setenv("LAMBDA_ECLIPSE_RUNS", str(tmp_path / "runs"))
    assert registry_location() == tmp_path / "runs" / "registry"
    monkeypatch.setenv("LAMBDA_ECLIPSE_REGISTRY", str(tmp_path / "elsewhere"))
    assert registry_location() == tmp_path / "elsewhere"
    assert registry_location(str(tmp_path / "given")) == tmp_path / "given"


def test_resolve_prior(runs, monkeypatch):
    assert resolve_prior("/explicit/final") == "/explicit/final"
    with pytest.raises(UserError, match=r"no --prior given and the prior registry .* has no current prior"):
        resolve_prior(None)
    reg = Registry.open()
    reg.put(record("prior-a"))
    reg.promote("prior-a", by="test", reason="")
    assert resolve_prior(None) == "/runs/prior-a/final"
    monkeypatch.delenv("LAMBDA_ECLIPSE_RUNS")
    with pytest.raises(UserError, match=r"no --prior given and no prior registry: set LAMBDA_ECLIPSE_RUNS .*; or "
                                        r"pass --prior DIR"):
        resolve_prior(None)


# -- the command line ------------------------------------------------------------------------------------------------

def test_priors_list_and_promote(runs, capsys):
    assert main(["priors", "list"]) == 2
    assert "lambda-eclipse priors: error: the prior registry" in capsys.readouterr().err
    reg = Registry.open()
    reg.put(record("prior-a", metrics=None))
    reg.put(record("prior-b", 300, trained_at="2026-11-30T11:00:00+00:00", started_from="prior-a"))
    assert main(["priors", "promote", "prior-b"]) == 0
    assert capsys.readouterr().out == "current prior: prior-b → /runs/prior-b/final (was none)\n"
    assert main(["priors", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["RUN", "STEPS", "DINO", "CLIP-I", "CLIP-T", "TRAINED", "DATASET", "(CONFIG", "HASH)",
                                "FROM"]
    assert lines[1].split() == ["prior-a", "100", "—", "—", "—", "2026-11-30T10:00:00+00:00", "/data/dataset",
                                "(0123456789ab)", "—"]
    assert lines[2].split() == ["*", "prior-b", "300", "0.6000", "0.7800", "0.3000", "2026-11-30T11:00:00+00:00",
                                "/data/dataset", "(0123456789ab)", "prior-a"]
    assert lines[3] == "* current: prior-b → /runs/prior-b/final"
    assert main(["priors", "promote", "prior-z", "--registry", str(runs / "registry")]) == 2
    assert "error: no prior 'prior-z' in the registry" in capsys.readouterr().err


def test_priors_commands_import_nothing_heavy(runs):
    """`priors list|promote` answer at once: no torch, Ray or Prefect."""
    code = ("import sys\nfrom flows.cli import main\nmain(['priors', 'list'])\n"
            "print(sorted(m for m in ('torch', 'ray', 'prefect') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.stdout.strip().splitlines()[-1] == "[]", run.stdout + run.stderr
    assert "the prior registry" in run.stderr and "is empty" in run.stderr


# -- one candidate, one run ----------------------------------------------------------------------------------------

def test_the_first_claim_on_a_candidate_holds_it(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    reg = Registry(tmp_path / "registry")
    claims = [{"run": f"prior-r{i}", "flow_run": f"r{i}", "flow_run_id": str(i), "data": "/d"} for i in range(8)]
    with ThreadPoolExecutor(8) as pool:  # eight deliveries of one event at once
        held = list(pool.map(lambda c: reg.claim("k1", c), claims))
    assert len({h["flow_run_id"] for h in held}) == 1  # every one sees the same winner
    assert reg.claimed("k1") == held[0] and reg.claimed("k2") is None
    assert reg.claim("k1", claims[5], replace=True)["flow_run_id"] == "5"  # taken over from a failed run
    assert not [p for p in (tmp_path / "registry" / "claims").iterdir() if p.name.startswith(".")]  # no staging left


def test_a_claim_on_object_storage_is_a_conditional_write():
    import uuid

    reg = Registry(f"memory://claims-{uuid.uuid4().hex}/registry")
    assert reg.claim("k", {"flow_run_id": "a"})["flow_run_id"] == "a"
    assert reg.claim("k", {"flow_run_id": "b"})["flow_run_id"] == "a"


def test_a_training_key_changes_with_the_dataset_its_shards_and_the_training_config(tmp_path):
    from prior.registry import dataset_identity, training_key
    from storage.synthetic_features import write_feature_dataset

    data = write_feature_dataset(tmp_path / "dataset", [(4, 2)])
    ident = dataset_identity(str(data))
    assert ident["data"] == str(data) and ident == dataset_identity(str(data))
    key = training_key(ident, None, {"train": {"seed": 0}}, None)
    assert key == training_key(dataset_identity(str(data)), None, {"train": {"seed": 0}}, None)
    assert key != training_key(ident, None, {"train": {"seed": 1}}, None)
    assert key != training_key(ident, "tiny", {"train": {"seed": 0}}, None)
    assert key != training_key(ident, None, {"train": {"seed": 0}}, "prior-earlier")
    grown = write_feature_dataset(tmp_path / "grown", [(4, 2), (3, 1)])
    assert dataset_identity(str(grown))["shards"] != dataset_identity(str(data))["shards"]
