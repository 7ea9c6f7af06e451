"""validate-dataset: a good dataset passes; each kind of corruption is found, with the shard and the problem named;
the CLI exits non-zero; the flow fails with the reason and publishes its report. Shards are written with the real
shard writer (the contract's code path), so their `_stats.json` is what build-dataset writes."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import featured_sample, rewrite_text_states_as_legacy

from flows.cli import main
from storage.layout import sha256_file, shard_paths, write_json_atomic
from storage.sample import Sample, SourceRef
from storage.schema import feature_schema
from storage.shard_writer import ShardWriter
from storage.validate import validate

STAGES = ["decode", "resolution", "caption"]
D = W = 8


def local_paths(root, shard: int) -> dict[str, Path]:
    """`shard_paths` under a local root, which are Paths."""
    return {kind: Path(path) for kind, path in shard_paths(root, shard).items()}


def _meta(root, d=D, w=W, train_fraction=0.8):
    write_json_atomic(root / "dataset.json", {
        "format": "lambda-eclipse-dataset/1", "profile": "tiny", "embed_dim": d, "text_width": w,
        "config": {"split": {"train_fraction": train_fraction}}, "zero_image_embedding": [0.0] * d,
    })


def _write(root, shard, keys, rejects=(), d=D, w=W, tamper=None):
    writer = ShardWriter(root, shard, feature_schema(d, w), 0.8, STAGES)
    for key in keys:
        sample = featured_sample(key, d=d, w=w)
        if tamper:
            tamper(sample)
        writer.add(sample)
    for key, stage in rejects:
        r = Sample(key=key, source=f"/data/{key}", ref=SourceRef("x"))
        r.reject_at(stage, f"{stage} says no")
        writer.add(r)
    return writer.close({"description": "test", "fingerprint": "f"})


def _keys(shard):
    return [f"s{shard}k{i}" for i in range(6)]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    root = tmp_path_factory.mktemp("valid") / "dataset"
    root.mkdir()
    _meta(root)
    for shard in range(3):
        _write(root, shard, _keys(shard), rejects=[(f"s{shard}r0", "decode"), (f"s{shard}r1", "caption")])
    return root


@pytest.fixture
def dataset(template, tmp_path):
    root = tmp_path / "dataset"
    shutil.copytree(template, root)
    return root


def _problems(root):
    report = validate(str(root))
    assert not report.ok
    return [str(p) for p in report.problems]


def test_a_good_dataset_passes(dataset, capsys):
    report = validate(str(dataset))
    assert report.ok, report.text()
    assert [s.shard for s in report.shards] == ["00000", "00001", "00002"]
    assert report.totals["rows"] == 18 and report.totals["rejected"] == 6
    assert report.totals["train"] + report.totals["val"] == 18
    assert main(["validate-dataset", str(dataset), "--no-flow"]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "00002" in out


@pytest.mark.slow
def test_a_command_on_the_embedded_prefect_server_prints_no_error(dataset, tmp_path):
    """As README's first command runs: no PREFECT_API_URL, so the command starts Prefect's embedded API server (~15 s),
    whose telemetry cannot be sent from a machine without internet access; the run's output has no ERROR line."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_SERVER_ANALYTICS_ENABLED")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # a fresh database, as on a new machine
    run = subprocess.run([sys.executable, "-m", "flows.cli", "validate-dataset", str(dataset)], env=env,
                         capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert "OK" in run.stdout
    assert [line for line in output.splitlines() if "ERROR" in line or "Traceback" in line] == [], output[-3000:]


def test_flipped_byte_is_a_sha256_mismatch(dataset):
    tar = local_paths(dataset, 1)["tar"]
    data = bytearray(tar.read_bytes())
    data[700] ^= 0x01  # inside the first member's payload: the tar still reads
    tar.write_bytes(bytes(data))
    (problem,) = _problems(dataset)
    assert problem.startswith("shard 00001: 00001.tar sha256 mismatch")


def test_duplicate_key_across_shards(dataset):
    _write(dataset, 3, ["s3k0", "s0k4"])
    problems = _problems(dataset)
    assert problems == ["shard 00003: duplicate key s0k4 (also in shard 00000)"]


def test_duplicate_rejected_key_across_shards(dataset):
    _write(dataset, 3, ["s3k0"], rejects=[("s1r1", "decode")])
    assert _problems(dataset) == ["shard 00003: duplicate key s1r1 (also in shard 00001)"]


def test_nan_in_an_embedding(dataset):
    def nan(sample):
        if sample.key == "s3k1":
            sample.features["target_embedding"][3] = np.nan
    _write(dataset, 3, ["s3k0", "s3k1"], tamper=nan)
    assert _problems(dataset) == ["shard 00003: column target_embedding has 1 NaN or infinite value(s)"]


def test_inf_in_the_text_hidden_states(dataset):
    def inf(sample):
        sample.features["text_hidden_states"][0, 0] = np.inf
    _write(dataset, 3, ["s3k0", "s3k1"], tamper=inf)
    assert _problems(dataset) == ["shard 00003: column text_hidden_states has 2 NaN or infinite value(s)"]


def test_wrong_embedding_dim(dataset):
    _write(dataset, 3, ["s3k0"], d=16)  # dataset.json says embed_dim 8
    problems = _problems(dataset)
    assert "shard 00003: column target_embedding has dim 16, dataset.json embed_dim is 8" in problems
    assert all(p.startswith("shard 00003: column ") and "dim 16" in p for p in problems)


def test_wrong_text_width(dataset):
    _write(dataset, 3, ["s3k0"], w=4)
    assert _problems(dataset) == [
        "shard 00003: column text_hidden_states has 308 values per sample, dataset.json says 77 × text_width 8 = 616"
    ]


def test_missing_shard_file(dataset):
    local_paths(dataset, 2)["rejects"].unlink()
    assert _problems(dataset) == ["shard 00002: file 00002_rejects.parquet is missing (listed in 00002_stats.json)"]


def test_a_shard_with_the_earlier_float16_list_text_states_is_still_valid(dataset):
    rewrite_text_states_as_legacy(dataset, 1)
    assert validate(str(dataset)).ok


def test_inf_in_earlier_float16_list_text_states(tmp_path):
    root = tmp_path / "dataset"
    root.mkdir()
    _meta(root)

    def infinite(sample: Sample):
        sample.features["text_hidden_states"][0, 0] = np.inf
    _write(root, 0, _keys(0), tamper=infinite)
    rewrite_text_states_as_legacy(root, 0)
    assert _problems(root) == ["shard 00000: column text_hidden_states has 6 NaN or infinite value(s)"]


def test_wrong_row_count(dataset):
    """The Parquet lost a row but its sha256 was updated (a bad rewrite): the count still disagrees."""
    paths = local_paths(dataset, 1)
    table = pq.read_table(paths["parquet"])
    pq.write_table(table.slice(0, 5), paths["parquet"])
    stats = json.loads(paths["stats"].read_text())
    stats["files"][paths["parquet"].name] = {"sha256": sha256_file(paths["parquet"]),
                                             "bytes": paths["parquet"].stat().st_size}
    write_json_atomic(paths["stats"], stats)
    problems = _problems(dataset)
    assert "shard 00001: 00001.parquet has 5 rows, _stats.json says 6 accepted" in problems
    assert all(p.startswith("shard 00001: ") for p in problems)
    assert any("00001.tar keys differ" in p for p in problems)


def test_missing_column_is_a_schema_problem(dataset):
    paths = local_paths(dataset, 0)
    pq.write_table(pq.read_table(paths["parquet"]).drop_columns(["edge_embedding"]), paths["parquet"])
    stats = json.loads(paths["stats"].read_text())
    stats["files"][paths["parquet"].name] = {"sha256": sha256_file(paths["parquet"]),
                                             "bytes": paths["parquet"].stat().st_size}
    write_json_atomic(paths["stats"], stats)
    assert _problems(dataset) == ["shard 00000: 00000.parquet lacks column(s) edge_embedding"]


def test_split_that_does_not_match_the_configured_fraction(dataset):
    _meta(dataset, train_fraction=0.2)  # the shards were split at 0.8
    problems = _problems(dataset)
    assert any("but its key hashes to" in p for p in problems)
    assert problems[-1].startswith("train fraction ") and "configured 0.2" in problems[-1]


def test_incomplete_shard_is_a_warning_and_no_dataset_json_is_an_error(dataset, capsys):
    (dataset / "shards" / "00007.parquet").write_bytes(b"partial")
    report = validate(str(dataset))
    assert report.ok and report.warnings == [
        "shard 00007 is incomplete (no 00007_stats.json): readers skip it; "
        "rerun build-dataset with the same --output to finish it"
    ]
    (dataset / "dataset.json").unlink()
    assert main(["validate-dataset", str(dataset), "--no-flow"]) == 2
    assert "not a λ-ECLIPSE dataset" in capsys.readouterr().err


def test_cli_reports_every_problem_and_exits_1(dataset, tmp_path, capsys):
    local_paths(dataset, 2)["tar"].unlink()
    _write(dataset, 3, ["s0k0"])
    assert main(["validate-dataset", str(dataset), "--no-flow", "--json", str(tmp_path / "r.json")]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "2 problem(s):" in out
    assert "shard 00002: file 00002.tar is missing" in out and "shard 00003: duplicate key s0k0" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["ok"] is False and len(report["problems"]) == 2


def test_fsspec_memory_url(template):
    import fsspec

    fs = fsspec.filesystem("memory")
    for path in template.rglob("*"):
        if path.is_file():
            fs.pipe(f"/validate-test/{path.relative_to(template)}", path.read_bytes())
    try:
        assert validate("memory://validate-test").ok
        fs.rm("/validate-test/shards/00000.tar")
        (problem,) = [str(p) for p in validate("memory://validate-test").problems]
        assert problem == "shard 00000: file 00000.tar is missing (listed in 00000_stats.json)"
    finally:
        fs.rm("/validate-test", recursive=True)


def _artifacts(keys):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        response = client._client.post(
            "/artifacts/filter", json={"artifacts": {"key": {"any_": keys}}, "sort": "CREATED_DESC", "limit": 50})
    latest = {}
    for artifact in response.json():
        latest.setdefault(artifact["key"], artifact)
    return latest


def test_flow_fails_with_the_reason_and_publishes_the_report(dataset, prefect_harness, capsys):
    from flows.validate_dataset import validate_dataset

    ok = validate_dataset(data=str(dataset))
    assert ok["ok"] and ok["totals"]["rows"] == 18
    assert "✅ valid" in _artifacts(["validate-dataset-report"])["validate-dataset-report"]["data"]

    data = bytearray(local_paths(dataset, 1)["parquet"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    local_paths(dataset, 1)["parquet"].write_bytes(bytes(data))
    state = validate_dataset(data=str(dataset), return_state=True)
    assert state.is_failed() and state.message is not None
    assert "INVALID" in state.message and "shard 00001: 00001.parquet sha256 mismatch" in state.message
    latest = _artifacts(["validate-dataset-report", "validate-dataset-shards"])
    assert "❌ invalid" in latest["validate-dataset-report"]["data"]
    assert "| 00001 | sha256 |" in latest["validate-dataset-report"]["data"]
    assert latest["validate-dataset-shards"]["type"] == "table"

    # The CLI runs the same flow: it prints the report and exits 1.
    assert main(["validate-dataset", str(dataset)]) == 1
    assert "shard 00001: 00001.parquet sha256 mismatch" in capsys.readouterr().out
