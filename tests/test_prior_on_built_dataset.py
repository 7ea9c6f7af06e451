"""The prior trains on a dataset that the build-dataset flow made (tiny profile): the two flows fit together."""

import pytest

from prior.config import load_train_config
from prior.train import prepare_training, read_metrics, run_training
from storage.reader import iter_samples

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def test_training_loss_halves_on_a_flow_built_dataset(built_dataset, tmp_path):
    _, data, summary = built_dataset  # the session's flow-built dataset (conftest), trained on the session's Ray
    train = sum(1 for _ in iter_samples(data, "train", columns=["key"]))
    assert summary["accepted"] >= 8 and train >= 4, summary

    settings = ["data.workers=0", "train.batch_size=8", "train.warmup_steps=2", "train.max_steps=150",
                "train.lr=1e-3", "log.every=10", "val.every=0", "val.batch_size=8"]
    job = prepare_training(str(data), str(tmp_path / "run"), "tiny", load_train_config(None, settings), False)
    result = run_training(job)
    losses = [r["loss"] for r in read_metrics(tmp_path / "run") if r["split"] == "train"]
    print(f"{train} train samples; loss {losses[0]:.3f} → {losses[-1]:.3f} ({1 - losses[-1] / losses[0]:.0%} lower)")
    assert result["step"] == 150
    assert losses[-1] <= 0.5 * losses[0]
