"""The prior's training loop on the tiny profile: it learns, resumes exactly, stops clearly; its config and CLI."""

import argparse
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from lambda_eclipse.errors import UserError
from lambda_eclipse.synthetic_features import write_feature_dataset as write_dataset
from prior import loss as loss_module
from prior import train as train_module
from prior.cli import add_parser
from prior.config import TrainConfig, load_train_config
from prior.model import EclipsePrior
from prior.train import checkpoints, lr_factor, prepare_training, read_metrics, run_training

FAST = ["data.workers=0", "train.batch_size=8", "train.warmup_steps=2", "val.batch_size=8"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("train-data"), [(9, 3), (7, 3), (6, 2)])




def train(data, run, settings, resume=False, profile="tiny"):
    return run_training(prepare_training(str(data), str(run), profile, load_train_config(None, settings), resume))


def _weights(run):
    return load_file(run / "final" / "diffusion_pytorch_model.safetensors")


def _history(run):
    return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in read_metrics(run)]


def test_training_overfits_a_small_dataset(dataset, tmp_path):
    summary = train(dataset, tmp_path, FAST + ["train.max_steps=150", "train.lr=1e-3", "log.every=10", "val.every=0"])
    losses = [r["loss"] for r in read_metrics(tmp_path) if r["split"] == "train"]
    print(f"train loss: first window {losses[0]:.3f}, last {losses[-1]:.3f} ({1 - losses[-1] / losses[0]:.0%} lower)")
    assert losses[-1] <= 0.5 * losses[0]
    assert summary["step"] == 150 and set(summary["train"]) >= {"loss", "mse", "contrastive", "lr", "grad_norm"}
    assert set(summary["val"]) >= {"loss", "mse", "contrastive", "cosine", "top1"}
    model = EclipsePrior.from_pretrained(summary["final"])  # diffusers layout, loadable as released
    assert model.config["embedding_dim"] == 32
    assert (tmp_path / "tensorboard").is_dir() and any((tmp_path / "tensorboard").iterdir())


def test_an_interrupted_and_resumed_run_ends_with_the_same_weights(dataset, tmp_path, monkeypatch):
    """A crash in step 7 (after the checkpoint of step 4), then --resume: same weights and history as one run.

    Two loader workers, a small shuffle buffer, epochs wrapping and the control drop exercise the data position.
    """
    settings = FAST + ["data.workers=2", "data.shuffle_buffer=5", "data.zero_control_prob=0.3", "train.batch_size=5",
                       "train.max_steps=12", "checkpoint.every=4", "checkpoint.keep=2", "log.every=2", "val.every=6"]
    train(dataset, tmp_path / "once", settings)

    calls = []

    def crash_in_step_7(*args, **kwargs):
        calls.append(1)
        if len(calls) == 7:
            raise RuntimeError("simulated kill")
        return loss_module.prior_loss(*args, **kwargs)

    monkeypatch.setattr(train_module, "prior_loss", crash_in_step_7)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(dataset, tmp_path / "twice", settings)
    assert [p.name for p in checkpoints(tmp_path / "twice")] == ["step-00000004"]  # step 6's val ran, no checkpoint
    monkeypatch.undo()
    summary = train(dataset, tmp_path / "twice", settings, resume=True)

    assert summary["step"] == 12
    once, twice = _weights(tmp_path / "once"), _weights(tmp_path / "twice")
    assert once.keys() == twice.keys()
    for name in once:
        assert torch.equal(once[name], twice[name]), name
    assert _history(tmp_path / "once") == _history(tmp_path / "twice")
    assert [p.name for p in checkpoints(tmp_path / "twice")] == ["step-00000008", "step-00000012"]  # keep 2
    state = torch.load(checkpoints(tmp_path / "twice")[-1] / "training_state.pt", weights_only=True)
    assert state["step"] == 12 and state["data"]["batches"] == 12
    assert {"optimizer", "scheduler", "scaler", "rng"} <= state.keys()


def test_a_non_finite_loss_stops_with_the_last_good_checkpoint(dataset, tmp_path, monkeypatch):
    calls = []

    def nan_in_step_6(*args, **kwargs):
        losses = loss_module.prior_loss(*args, **kwargs)
        calls.append(1)
        if len(calls) == 6:
            losses["total"] = losses["total"] * float("nan")
        return losses

    monkeypatch.setattr(train_module, "prior_loss", nan_in_step_6)
    settings = FAST + ["train.max_steps=10", "checkpoint.every=4", "log.every=1", "val.every=0"]
    with pytest.raises(UserError, match="NaN or infinite between steps 5 and 6; .*last good checkpoint is .*step-0+4"):
        train(dataset, tmp_path, settings)
    assert [p.name for p in checkpoints(tmp_path)] == ["step-00000004"]
    assert not (tmp_path / "final").exists()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs(dataset, tmp_path, precision):
    """The autocast and fp16 loss-scaling paths (meant for GPUs; CPU autocast runs the same code)."""
    summary = train(dataset, tmp_path, FAST + ["train.max_steps=3", f"runtime.precision={precision}"])
    assert summary["step"] == 3 and all(math.isfinite(summary["val"][k]) for k in ("loss", "cosine"))
    state = torch.load(checkpoints(tmp_path)[-1] / "training_state.pt", weights_only=True)
    assert bool(state["scaler"]) == (precision == "fp16")  # the loss scale is saved for resume


def test_run_errors_are_clear(dataset, tmp_path):
    with pytest.raises(UserError, match="the paper prior takes 1280-d CLIP embeddings, but dataset .* has 32-d"):
        prepare_training(str(dataset), str(tmp_path / "a"), "paper", TrainConfig(), False)
    with pytest.raises(UserError, match="is not a λ-ECLIPSE dataset"):
        prepare_training(str(tmp_path / "nothing"), str(tmp_path / "b"), "tiny", TrainConfig(), False)
    with pytest.raises(UserError, match="3 shards with training samples; 4 data-parallel trainers"):
        cfg = load_train_config(None, ["runtime.workers=4"])
        prepare_training(str(dataset), str(tmp_path / "c"), "tiny", cfg, False)
    with pytest.raises(UserError, match="--output memory://runs/d: the run directory must be a local path"):
        prepare_training(str(dataset), "memory://runs/d", "tiny", TrainConfig(), False)
    train(dataset, tmp_path / "run", FAST + ["train.max_steps=2", "val.max_batches=1"])
    with pytest.raises(UserError, match="already holds checkpoints .*step-00000002.*pass --resume"):
        prepare_training(str(dataset), str(tmp_path / "run"), "tiny", TrainConfig(), False)
    other = write_dataset(tmp_path / "d16", [(3, 1)], d=16)
    with pytest.raises(UserError, match="is another model than profile 'tiny'.*embedding_dim"):
        prepare_training(str(other), str(tmp_path / "run"), "tiny", TrainConfig(), True)


def test_resume_without_steps_left_keeps_the_run(dataset, tmp_path):
    first = train(dataset, tmp_path, FAST + ["train.max_steps=3"])
    again = train(dataset, tmp_path, FAST + ["train.max_steps=3"], resume=True)
    assert again["step"] == 3 and again["val"] == first["val"]
    assert [p.name for p in checkpoints(tmp_path)] == ["step-00000003"]


def test_learning_rate_warms_up_then_follows_the_schedule():
    t = TrainConfig().train
    t.warmup_steps, t.max_steps, t.min_lr_ratio = 10, 110, 0.1
    assert lr_factor(t, 0) == pytest.approx(0.1) and lr_factor(t, 9) == pytest.approx(1.0)
    assert lr_factor(t, 60) == pytest.approx(0.55) and lr_factor(t, 110) == pytest.approx(0.1)
    t.schedule = "linear"
    assert lr_factor(t, 60) == pytest.approx(0.55) and lr_factor(t, 35) == pytest.approx(0.775)
    t.schedule = "constant"
    assert lr_factor(t, 100) == 1.0


def test_config_defaults_file_overrides_and_checks(tmp_path):
    cfg = TrainConfig()
    assert (cfg.train.lr, cfg.train.batch_size, cfg.data.zero_control_prob) == (5e-5, 512, 0.01)
    assert (cfg.loss.lam, cfg.loss.tau) == (loss_module.LAMBDA, loss_module.TAU)
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1.0e-4\n  max_steps: 50\n")
    cfg = load_train_config(path, ["train.max_steps=20", "runtime.precision=bf16"])
    assert (cfg.train.lr, cfg.train.max_steps, cfg.runtime.precision) == (1e-4, 20, "bf16")
    with pytest.raises(UserError, match="unknown config key 'train.steps'; valid keys in train: batch_size"):
        load_train_config(None, ["train.steps=3"])
    with pytest.raises(UserError, match="train.schedule must be one of cosine, linear, constant .got 'step'.; "
                                        "runtime.workers must be ≥ 0"):
        load_train_config(None, ["train.schedule=step", "runtime.workers=-1"])


def test_cli_parses_and_lists_every_config_key(dataset, tmp_path, capsys):
    top = argparse.ArgumentParser(prog="lambda-eclipse")
    add_parser(top.add_subparsers(dest="command"))
    args = top.parse_args(["train-prior", "--data", str(dataset), "--output", str(tmp_path), "--set", "train.lr=1e-4",
                           "--resume"])
    assert (args.profile, args.set, args.resume) == ("tiny", ["train.lr=1e-4"], True)
    with pytest.raises(SystemExit):
        top.parse_args(["train-prior", "--help"])
    text = capsys.readouterr().out
    for section, values in TrainConfig().to_dict().items():
        for key, value in values.items():
            assert f"{section}.{key}={value}" in text
    bad = top.parse_args(["train-prior", "--data", str(dataset), "--output", str(tmp_path), "--set", "val.evry=3"])
    with pytest.raises(UserError, match="unknown config key 'val.evry'"):
        bad.run(bad)
    assert json.dumps(TrainConfig().to_dict())  # the config travels as JSON (summary, Prefect parameters)
