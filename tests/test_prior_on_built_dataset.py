"""The prior trains on a dataset that the build-dataset flow made (tiny profile): the two flows fit together."""

import pytest

from prior.config import load_train_config
from prior.driver import run_training
from prior.prepare import prepare_training
from storage.reader import iter_samples
from storage.run_dir import read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def test_training_loss_halves_on_a_flow_built_dataset(built_dataset, tmp_path):
    _, data, summary = built_dataset  # the session's flow-built dataset (conftest), trained on the session's Ray
    train = sum(1 for _ in iter_samples(data, "train", columns=["key"]))
    assert summary["accepted"] >= 8 and train >= 4, summary

    settings = ["data.loader_workers=0", "train.batch_size=8", "train.warmup_steps=2", "train.max_steps=150",
                "train.lr=1e-3", "log.every=10", "val.every=0", "val.batch_size=8"]
    job = prepare_training(str(data), str(tmp_path / "run"), "tiny", load_train_config(None, settings), False)
    result = run_training(job)
    losses = [r["loss"] for r in read_metrics(tmp_path / "run") if r["split"] == "train"]
    print(f"{train} train samples; loss {losses[0]:.3f} → {losses[-1]:.3f} ({1 - losses[-1] / losses[0]:.0%} lower)")
    assert result["step"] == 150
    assert losses[-1] <= 0.5 * losses[0]


def test_the_readme_example_learns_on_the_contrastive_term(built_dataset, tmp_path, caplog):
    """The README's train-prior example (the default global batch of 1,024 and τ, a short warm-up): the batch is
    capped at the training samples with one warning, τ is 0.1·d, and the contrastive term ends below chance
    (ln of the batch), where a batch of copies and τ = 128 kept it at ln 1024 on every step."""
    import logging
    import math

    _, data, _ = built_dataset
    train = sum(1 for _ in iter_samples(data, "train", columns=["key"]))
    settings = ["data.loader_workers=0", "train.max_steps=400", "train.warmup_steps=20", "train.lr=1e-3",
                "log.every=50", "val.every=0"]
    job = prepare_training(str(data), str(tmp_path / "run"), "tiny", load_train_config(None, settings), False)
    assert job.cfg.loss.tau == pytest.approx(0.1 * job.data.embed_dim)
    with caplog.at_level(logging.WARNING, logger="prior.driver"):
        result = run_training(job)
    assert f"train.batch_size=1024 is more than the dataset's {train} training samples" in caplog.text
    assert result["batch"]["global"] == train
    contrastive = [r["contrastive"] for r in read_metrics(tmp_path / "run") if r["split"] == "train"]
    print(f"contrastive {contrastive[0]:.3f} → {contrastive[-1]:.3f}; chance ln {train} = {math.log(train):.3f}")
    assert contrastive[-1] < 0.8 * math.log(train)
