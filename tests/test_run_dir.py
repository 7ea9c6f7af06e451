"""A training run's directory (storage/run_dir.py), the one train-prior and finetune-decoder share: its checkpoints,
metrics.jsonl and RNG state, the same on a local path and on an fsspec URL."""

import uuid
from pathlib import Path

import pytest
import torch

from storage.fs import join, makedirs, write_bytes
from storage.run_dir import capture_rng, checkpoint_name, checkpoints, read_metrics, restore_rng, write_metrics


@pytest.fixture(params=["local", "memory"])
def run(request, tmp_path):
    return tmp_path / "run" if request.param == "local" else f"memory://runs/{uuid.uuid4().hex}"


def test_checkpoints_are_the_step_directories_oldest_first(run):
    assert checkpoints(run) == []
    for entry in (checkpoint_name(12), checkpoint_name(4), f".{checkpoint_name(16)}.tmp"):  # the last being written
        makedirs(join(run, "checkpoints", entry))
    write_bytes(join(run, "checkpoints", "checkpoint_manager_snapshot.json"), b"{}")  # Ray Train's record
    found = checkpoints(run)
    assert found == [join(run, "checkpoints", "step-00000004"), join(run, "checkpoints", "step-00000012")]
    assert all(isinstance(c, Path if isinstance(run, Path) else str) for c in found)  # as storage/fs.py's locations


def test_checkpoints_of_a_relative_run_stay_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out" / "checkpoints" / "step-00000001").mkdir(parents=True)
    assert checkpoints("out") == [Path("out/checkpoints/step-00000001")]


def test_metrics_are_one_history_rewritten_whole(run):
    assert read_metrics(run) == []
    makedirs(run)
    records = [{"step": 2, "loss": 1.5}, {"step": 4, "loss": 0.5}]
    write_metrics(run, records)
    assert read_metrics(run) == records
    write_metrics(run, records[:1])  # a resumed run's history: what came after its checkpoint is gone
    assert read_metrics(run) == records[:1]


def test_the_rng_state_comes_back_with_the_named_generators():
    data = torch.Generator().manual_seed(3)
    torch.manual_seed(5)
    saved = capture_rng({"data": data})
    assert {"data", "cpu"} <= saved.keys() and ("cuda" in saved) == torch.cuda.is_available()
    expected = torch.rand(3), torch.rand(3, generator=data)
    torch.manual_seed(0)
    data.manual_seed(0)
    restore_rng(saved, {"data": data})
    assert all(torch.equal(a, b) for a, b in zip(expected, (torch.rand(3), torch.rand(3, generator=data))))
