"""Provenance of a trained prior (prior/provenance.py, prior/registry.py's `leak_flag`, `priors list`): the
dataset's config hash, the shards read and their Parquet sha256, the marked samples skipped, the dataset's leak check;
a prior that may have trained on its benchmark's images is flagged. The retrain loop checks the dataset for leaks of
its evaluation set before it trains, and its prior does not train on them."""

import json

import pytest
from conftest import RETRAIN_EVAL, RETRAIN_TRAIN, latest_artifact

from flows.cli import main
from prior.config import load_train_config
from prior.data import open_dataset
from prior.provenance import provenance
from prior.registry import Registry, decide, decision_markdown, leak_flag, shard_digests
from storage.marks import LEAKS, write_marks
from storage.synthetic_features import keys_for, write_feature_dataset

GOOD = {"dino": 0.60, "clip_i": 0.78, "clip_t": 0.30}


def _dataset(root, config_hash="0123456789abcdef"):
    data = write_feature_dataset(root, [(6, 2), (5, 2)])
    meta = json.loads((data / "dataset.json").read_text())
    (data / "dataset.json").write_text(json.dumps(meta | {"config_hash": config_hash}))
    return data


def _mark(data, key: str, benchmark: str = "/bench") -> None:
    row = {"key": key, "kind": "leak", "match": "dog/00.jpg", "score": 1.0, "detail": "photo"}
    write_marks(data, LEAKS, {1: [row]}, {"benchmark": benchmark, "checked_at": "2026-12-01T00:00:00+00:00",
                                          "checked_shards": shard_digests(data, [0, 1])})


def _provenance(data, *overrides: str) -> dict:
    cfg = load_train_config(None, list(overrides))
    return provenance(open_dataset(data, cfg.data.skip_duplicates, cfg.data.skip_leaks), cfg)


def test_provenance_records_the_shards_the_skipped_marks_and_the_leak_check(tmp_path):
    data = _dataset(tmp_path / "dataset")
    _mark(data, keys_for("train", 6, "s1")[0])
    found = _provenance(data)
    stats = [json.loads((data / "shards" / f"0000{s}_stats.json").read_text()) for s in (0, 1)]
    assert found["dataset_hash"] == "0123456789abcdef"
    assert found["shards"] == {f"0000{s}": stats[s]["files"][f"0000{s}.parquet"]["sha256"] for s in (0, 1)}
    assert found["skipped"] == {"leaks": 1} and found["marks"] == {"leaks": 1} and found["skip_leaks"] is True
    assert found["leak_check"] == {"benchmark": "/bench", "checked_at": "2026-12-01T00:00:00+00:00", "marked": 1,
                                   "unchecked_shards": []}
    assert leak_flag(found, "/bench") is None
    assert leak_flag(found, "/other") == "the dataset was checked against /bench, not the benchmark /other"
    assert leak_flag(found, "/bench", {"run": "prior-a", "leak_flag": "no leak check"}) == (
        "continues prior-a, which is flagged")

    trained_on = _provenance(data, "data.skip_leaks=false")  # the marks stand, the loader reads them anyway
    assert trained_on["skipped"] == {} and trained_on["skip_leaks"] is False and trained_on["marks"] == {"leaks": 1}
    assert leak_flag(trained_on, "/bench") == (
        "1 sample(s) marked as benchmark leaks were trained on (data.skip_leaks=false)")

    record = json.loads((data / "shards" / "00001_stats.json").read_text())  # shard 1 rebuilt after the check
    record["files"]["00001.parquet"]["sha256"] = "f" * 64
    (data / "shards" / "00001_stats.json").write_text(json.dumps(record))
    changed = _provenance(data)
    assert changed["leak_check"]["unchecked_shards"] == ["00001"]
    assert leak_flag(changed, "/bench") == "1 shard(s) read were not checked as they are now (00001)"


def test_a_dataset_never_checked_is_flagged_when_the_prior_is_evaluated_on_a_benchmark(tmp_path):
    found = _provenance(_dataset(tmp_path / "dataset"))
    assert found["leak_check"] is None and found["skipped"] == {} and found["marks"] == {}
    assert leak_flag(found, "/bench") == ("no leak check: the dataset was not checked against the benchmark /bench "
                                          "(lambda-eclipse decontaminate)")
    assert leak_flag(found, None) is None
    assert leak_flag(None, "/bench") is None  # a record written before provenance


def _record(run, trained_at, **extra):
    return {"run": run, "run_dir": f"/runs/{run}", "final": f"/runs/{run}/final", "data": "/data/dataset",
            "dataset_hash": "0123456789abcdef0123", "profile": "tiny", "steps": 100, "metrics": GOOD,
            "trained_at": trained_at, "started_from": None} | extra


def test_priors_list_shows_provenance_and_flags_and_reads_older_records(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LAMBDA_ECLIPSE_REGISTRY", raising=False)
    monkeypatch.setenv("LAMBDA_ECLIPSE_RUNS", str(tmp_path))
    reg = Registry.open()
    checked = {"benchmark": "/bench", "checked_at": "2026-12-01T00:00:00+00:00", "marked": 1, "unchecked_shards": []}
    shards = {"00000": "a" * 64, "00001": "b" * 64}
    reg.put(_record("prior-old", "2026-11-30T10:00:00+00:00"))  # before provenance
    reg.put(_record("prior-clean", "2026-11-30T11:00:00+00:00", leak_flag=None, provenance={
        "dataset_hash": "0123456789abcdef", "shards": shards, "skipped": {"leaks": 1}, "skip_leaks": True,
        "leak_check": checked}))
    reason = "1 sample(s) marked as benchmark leaks were trained on (data.skip_leaks=false)"
    reg.put(_record("prior-leaky", "2026-11-30T12:00:00+00:00", leak_flag=reason, provenance={
        "dataset_hash": "0123456789abcdef", "shards": shards, "skipped": {}, "skip_leaks": False,
        "leak_check": checked}))
    reg.promote("prior-clean", by="test", reason="first")
    assert main(["priors", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-4:] == ["FROM", "SHARDS", "SKIPPED", "LEAKS"]
    assert lines[1].split()[-4:] == ["—", "?", "?", "?"]
    assert lines[2].split()[0] == "*" and lines[2].split()[-4:] == ["—", "2", "leaks=1", "checked"]
    assert lines[3].split()[-4:] == ["—", "2", "—", "LEAK"]
    assert lines[4] == "* current: prior-clean → /runs/prior-clean/final"
    assert lines[5:] == [f"LEAK prior-leaky: {reason}"]
    text = decision_markdown(decide(GOOD, None, 0.0), reg.get("prior-leaky"), None, 0.0)
    assert f"**LEAK**: the candidate's training data may hold benchmark images: {reason}" in text


# -- the retrain loop ------------------------------------------------------------------------------------------------



@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread", "prefect_harness", "ray_local")
def test_the_retrain_loop_marks_a_benchmark_photo_in_its_dataset_and_trains_without_it(tmp_path, monkeypatch,
                                                                                      capsys):
    import tarfile

    from conftest import logs_of_latest_run

    from flows.retrain import retrain
    from lambda_eclipse.synthetic import write_photos

    monkeypatch.setenv("LAMBDA_ECLIPSE_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("LAMBDA_ECLIPSE_REGISTRY", raising=False)
    monkeypatch.delenv("LAMBDA_ECLIPSE_GPU_SLOTS", raising=False)
    data = _dataset(tmp_path / "dataset")
    leaked = keys_for("train", 6, "s1")[3]
    bench = tmp_path / "dreambench"
    write_photos(bench / "dog", 2, size=64)
    with tarfile.open(data / "shards" / "00001.tar") as tar:  # a training photo that is also a DreamBench photo
        member = tar.extractfile(f"{leaked}.jpg")
        assert member is not None
        (bench / "dog" / "photo_leaked.jpg").write_bytes(member.read())

    first = retrain(runs=str(tmp_path / "runs"), benchmark_data=str(bench), data=str(data), overrides=RETRAIN_TRAIN,
                    eval_overrides=RETRAIN_EVAL)
    reg = Registry.open()
    record = reg.get(first["run"])
    p = record["provenance"]
    assert first["leak_flag"] is None and record["leak_flag"] is None
    assert p["skipped"] == {"leaks": 1}  # the loader left the leaked photo out
    assert p["leak_check"]["benchmark"] == str(bench) and p["leak_check"]["marked"] == 1
    assert p["leak_check"]["unchecked_shards"] == [] and p["dataset_hash"] == "0123456789abcdef"
    assert p["shards"] == shard_digests(data, [0, 1])
    summary = json.loads((tmp_path / "runs" / first["run"] / "summary.json").read_text())
    assert summary["provenance"] == p
    logs = logs_of_latest_run("retrain", "leak check: ")
    assert f"leak check: 1 training sample matches the benchmark {bench} (dog 1)" in logs
    assert f"`{leaked}`" in latest_artifact("decontaminate-report") and "`dog/photo_leaked.jpg`" in latest_artifact(
        "decontaminate-report")

    # trained on the marked sample anyway: flagged in the record, the log, the promotion artifact and `priors list`;
    # the dataset's check is current, so it is not scanned again
    second = retrain(runs=str(tmp_path / "runs"), benchmark_data=str(bench), data=str(data),
                     overrides=RETRAIN_TRAIN + ["data.skip_leaks=false"], eval_overrides=RETRAIN_EVAL, tolerance=1.0)
    reason = "1 sample(s) marked as benchmark leaks were trained on (data.skip_leaks=false)"
    flagged = reg.get(second["run"])
    assert second["leak_flag"] == flagged["leak_flag"] == reason and flagged["provenance"]["skipped"] == {}
    logs = logs_of_latest_run("retrain", "LEAK: ")
    assert f"LEAK: {second['run']} may have trained on images of the benchmark {bench}: {reason}" in logs
    assert f"leak check: {data} was checked against {bench} at " in logs
    assert f"**LEAK**: the candidate's training data may hold benchmark images: {reason}" in latest_artifact(
        "retrain-promotion")
    capsys.readouterr()
    assert main(["priors", "list"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[1] if line.startswith("*") else line.split()[0]: line.split()[-3:]
            for line in out.splitlines()[1:3]}
    assert rows == {first["run"]: ["2", "leaks=1", "checked"], second["run"]: ["2", "—", "LEAK"]}
    assert f"LEAK {second['run']}: {reason}" in out
