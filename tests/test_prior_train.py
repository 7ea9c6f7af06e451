"""The prior's training loop on the tiny profile, on Ray Train (the session's local Ray): it learns, resumes exactly,
stops clearly, starts a new run from another's state, picks the prior size from the dataset; its config and CLI."""

import argparse
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flows.commands.train_prior import add_parser
from lambda_eclipse.errors import UserError, WorkerError
from prior import loss as loss_module
from prior.checkpoints import training_state
from prior.config import TrainConfig, load_train_config
from prior.driver import run_training
from prior.loop import lr_factor
from prior.model import EclipsePrior
from prior.prepare import choose_profile, prepare_training
from storage.fs import name
from storage.layout import complete_shards, shard_paths
from storage.run_dir import checkpoints, read_metrics
from storage.synthetic_features import write_feature_dataset as write_dataset

FAST = ["data.loader_workers=0", "train.batch_size=8", "train.warmup_steps=2", "val.batch_size=8"]

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("train-data"), [(9, 3), (7, 3), (6, 2)])


FINISHED = FAST + ["train.max_steps=3", "val.max_batches=1", "runtime.precision=fp16"]


@pytest.fixture(scope="module")
def finished(dataset, tmp_path_factory):
    """A finished run of 3 steps, in fp16 autocast with loss scaling (the GPU path; CPU autocast runs the same code)."""
    run = tmp_path_factory.mktemp("finished")
    return run, train(dataset, run, FINISHED)


def train(data, run, settings, resume=False, profile=None, init_from=None):
    job = prepare_training(str(data), str(run), profile, load_train_config(None, settings), resume, init_from)
    return run_training(job)


def _weights(path):
    return load_file(path / "diffusion_pytorch_model.safetensors")


def _names(run):
    return [name(p) for p in checkpoints(run)]


def test_training_overfits_a_small_dataset(dataset, tmp_path):
    summary = train(dataset, tmp_path, FAST + ["train.max_steps=150", "train.lr=1e-3", "log.every=10", "val.every=0"])
    # the squared error: the contrastive term's share of the total depends on λ, so the total's drop would measure λ
    # as much as learning
    errors = [r["mse"] for r in read_metrics(tmp_path) if r["split"] == "train"]
    print(f"train mse: first window {errors[0]:.3f}, last {errors[-1]:.3f} ({1 - errors[-1] / errors[0]:.0%} lower)")
    assert errors[-1] <= 0.6 * errors[0]
    assert summary["step"] == 150 and set(summary["train"]) >= {"loss", "mse", "contrastive", "lr", "grad_norm"}
    assert set(summary["val"]) >= {"loss", "mse", "contrastive", "cosine", "top1"}
    assert summary["profile"] == "tiny" and summary["checkpoint"] == str(tmp_path / "checkpoints" / "step-00000150")
    # how it was trained, in the summary and next to every checkpoint's weights (generate reads it from there)
    record = {"loss": {"lam": 0.2, "tau": pytest.approx(3.2), "reduction": "mean", "similarity": "dot"},  # 0.1·d
              "batch": {"global": 8, "trainers": 1, "per_trainer": 8, "negatives": "global batch"},
              "dataset": str(dataset), "edge": None, "subjects": None}  # a dataset written without a build config
    assert {k: summary[k] for k in record} == record
    for where in (tmp_path / "final", tmp_path / "checkpoints" / "step-00000150"):
        assert json.loads((where / "training.json").read_text()) == record
    model = EclipsePrior.from_pretrained(summary["final"])  # diffusers layout, loadable as released
    assert model.config["embedding_dim"] == 32
    assert any((tmp_path / "tensorboard").iterdir())  # copied from rank 0's scratch directory


def test_a_stopped_and_resumed_run_ends_with_the_same_weights(dataset, tmp_path):
    """A run stopped at step 7, then --resume to 12: same weights as one run of 12 steps (a constant schedule after
    warm-up, so that max_steps changes nothing else). Two loader workers, a small shuffle buffer, epochs wrapping and
    the control drop exercise the data position; the optimizer, RNG and schedule cross the restart. Costs three Ray
    Train runs (~25 s each to start): ~80 s alone, up to ~110 s beside another pytest-xdist worker."""
    settings = FAST + ["data.loader_workers=2", "data.shuffle_buffer=5", "data.zero_control_prob=0.3",
                       "train.batch_size=5", "checkpoint.every=4", "checkpoint.keep=2", "log.every=2", "val.every=6",
                       "train.schedule=constant"]
    train(dataset, tmp_path / "once", settings + ["train.max_steps=12"])
    train(dataset, tmp_path / "twice", settings + ["train.max_steps=7"])
    assert _names(tmp_path / "twice") == ["step-00000004", "step-00000007"]
    summary = train(dataset, tmp_path / "twice", settings + ["train.max_steps=12"], resume=True)

    assert summary["step"] == 12
    once, twice = _weights(tmp_path / "once" / "final"), _weights(tmp_path / "twice" / "final")
    assert once.keys() == twice.keys()
    for key in once:
        assert torch.equal(once[key], twice[key]), key
    assert _names(tmp_path / "twice") == ["step-00000008", "step-00000012"]  # keep 2
    state = torch.load(tmp_path / "twice" / "checkpoints" / "step-00000012" / "training_state.pt", weights_only=True)
    assert state["step"] == 12 and state["data"]["batches"] == 12
    assert {"optimizer", "scheduler", "scaler", "rng", "metrics"} <= state.keys()
    steps = [(r["split"], r["step"]) for r in read_metrics(tmp_path / "twice")]
    assert steps == sorted(steps, key=lambda s: s[1]) and ("val", 7) in steps and ("val", 12) in steps


def test_the_loss_options_reach_the_training_step(dataset):
    """The first step's loss terms (same weights, same batch) under each loss option, through the training loop's
    step (step_losses, which train_loop calls with the run's config: the Ray Train runs above and below use it):
    reduction=mean (the default) divides the summed squared error by d and leaves the contrastive term;
    similarity=cosine changes only the contrastive term."""
    from prior.loop import step_losses

    d = json.loads((dataset / "dataset.json").read_text())["embed_dim"]
    g = torch.Generator().manual_seed(1)
    batch = {"hidden_states": torch.randn(8, d, generator=g), "proj_embedding": 6 * torch.randn(8, d, generator=g),
             "encoder_hidden_states": torch.randn(8, 77, d, generator=g),
             "attention_mask": (torch.arange(77)[None] < torch.randint(3, 20, (8, 1), generator=g)).long(),
             "control_embedding": torch.randn(8, d, generator=g), "target": torch.randn(8, d, generator=g)}
    torch.manual_seed(0)
    net = EclipsePrior.tiny(d)

    def first_step(*options: str) -> dict:
        cfg = load_train_config(None, list(options))
        with torch.no_grad():
            return {k: v.item() for k, v in step_losses(net, dict(batch), cfg, torch.float32, 0, 1).items()}

    paper = first_step("loss.reduction=sum")
    mean = first_step()  # the default
    cosine = first_step("loss.reduction=sum", "loss.similarity=cosine", "loss.tau=0.01")
    assert mean["mse"] == pytest.approx(paper["mse"] / d, rel=1e-5)
    assert mean["contrastive"] == pytest.approx(paper["contrastive"], rel=1e-5)
    assert cosine["mse"] == pytest.approx(paper["mse"], rel=1e-5)
    assert cosine["contrastive"] != pytest.approx(paper["contrastive"], rel=1e-3)


def test_a_trainer_that_keeps_failing_ends_the_run_in_one_line(dataset, tmp_path):
    """A shard unreadable once the run has started: the trainer fails, is restarted runtime.max_failures times, and
    the run ends with one line naming the trainer and the cause."""
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    job = prepare_training(str(data), str(tmp_path / "run"), None,
                           load_train_config(None, FAST + ["train.max_steps=4", "runtime.max_failures=1"]), False)
    for shard in complete_shards(data):
        Path(shard_paths(data, shard)["parquet"]).write_bytes(b"not parquet")
    with pytest.raises(WorkerError, match=r"^train-prior failed after runtime.max_failures=1 restarts: trainer 0: "
                                          r"\w+: .*; \S+ keeps its checkpoints: continue it with --resume$"):
        run_training(job)


def test_a_non_finite_loss_stops_the_run_without_retries(dataset, tmp_path):
    """A learning rate that blows the weights up: the run fails at once (Ray does not retry it) and saves nothing
    after the loss went bad."""
    settings = FAST + ["train.max_steps=20", "train.lr=1e30", "train.warmup_steps=0", "checkpoint.every=1",
                       "log.every=1", "val.every=0", "runtime.max_failures=3"]
    with pytest.raises(UserError, match=r"NaN or infinite between steps (\d+) and \1?\d*; stopped without saving; "
                                        r"the last good checkpoint is .*step-0+\d+: resume from it with a lower"):
        train(dataset, tmp_path, settings)
    assert not (tmp_path / "final").exists() and not (tmp_path / "summary.json").exists()
    for checkpoint in checkpoints(tmp_path):  # every checkpoint written is a finite one
        assert all(torch.isfinite(v).all() for v in load_file(f"{checkpoint}/diffusion_pytorch_model.safetensors")
                   .values())


def test_mixed_precision_runs(finished):
    run, summary = finished
    assert summary["step"] == 3 and all(math.isfinite(summary["val"][k]) for k in ("loss", "cosine"))
    state = torch.load(f"{checkpoints(run)[-1]}/training_state.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0  # the fp16 loss scale is saved for resume


def test_run_errors_are_clear(dataset, finished, tmp_path):
    with pytest.raises(UserError, match="the paper prior takes 1280-d CLIP embeddings, but dataset .* has 32-d"):
        prepare_training(str(dataset), str(tmp_path / "a"), "paper", TrainConfig(), False)
    with pytest.raises(UserError, match="is not a λ-ECLIPSE dataset"):
        prepare_training(str(tmp_path / "nothing"), str(tmp_path / "b"), "tiny", TrainConfig(), False)
    with pytest.raises(UserError, match="3 shards with training samples; 4 data-parallel trainers"):
        cfg = load_train_config(None, ["runtime.trainers=4"])
        prepare_training(str(dataset), str(tmp_path / "c"), "tiny", cfg, False)
    with pytest.raises(UserError, match="--output memory://runs/d: the run directory must be visible to every Ray"):
        prepare_training(str(dataset), "memory://runs/d", "tiny", TrainConfig(), False)
    with pytest.raises(UserError, match="runtime.device=cuda, but the Ray cluster has no GPUs"):
        cfg = load_train_config(None, FAST + ["runtime.device=cuda"])
        run_training(prepare_training(str(dataset), str(tmp_path / "e"), None, cfg, False))
    run, _ = finished
    with pytest.raises(UserError, match="already holds checkpoints .*step-00000003.*pass --resume"):
        prepare_training(str(dataset), str(run), "tiny", TrainConfig(), False)
    other = write_dataset(tmp_path / "d16", [(3, 1)], d=16)
    with pytest.raises(UserError, match="is another model than profile 'tiny'.*embedding_dim"):
        prepare_training(str(other), str(run), "tiny", TrainConfig(), True)
    with pytest.raises(UserError, match="is another model than profile 'tiny'.*embedding_dim"):
        prepare_training(str(other), str(tmp_path / "f"), "tiny", TrainConfig(), False, init_from=str(run))
    with pytest.raises(UserError, match=f"--init-from {tmp_path / 'nothing'}: no training state there"):
        prepare_training(str(dataset), str(tmp_path / "g"), "tiny", TrainConfig(), False, str(tmp_path / "nothing"))


def test_resume_without_steps_left_keeps_the_run(dataset, finished):
    run, first = finished
    again = train(dataset, run, FINISHED, resume=True)
    assert again["step"] == 3 and again["val"] == first["val"]
    assert _names(run) == ["step-00000003"]


def test_init_from_starts_a_new_run_from_another_runs_state(dataset, finished, tmp_path):
    """The retraining step: continue a finished run for train.steps_per_run more steps in a new run directory; the
    old run is only read. Its final/ and its checkpoint name the same training state."""
    run, first = finished
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    assert training_state(str(run)) == training_state(str(run / "final")) == first["checkpoint"]
    assert training_state(first["checkpoint"]) == first["checkpoint"]
    summary = train(dataset, tmp_path, FAST + ["train.max_steps=3", "train.steps_per_run=2", "val.max_batches=1"],
                    init_from=str(run / "final"))
    assert summary["step"] == 5 and summary["started_from"] == first["checkpoint"]
    assert _names(tmp_path) == ["step-00000005"]
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
    state = torch.load(tmp_path / "checkpoints" / "step-00000005" / "training_state.pt", weights_only=True)
    assert state["data"]["batches"] == 2  # a new run: its dataset from its first batch
    assert state["schedule"]["start"] == 3 and state["schedule"]["stop"] == 5
    assert [r["step"] for r in state["metrics"]] == [r["step"] for r in read_metrics(tmp_path)] == [5, 5]
    moved = _weights(tmp_path / "final")
    assert any(not torch.equal(moved[k], v) for k, v in _weights(run / "final").items())


def test_the_prior_size_follows_the_dataset(tmp_path):
    assert choose_profile(None, 1280) == ("paper", None)
    assert choose_profile(None, 32) == ("tiny", None)
    assert choose_profile("paper", 1280) == ("paper", None)
    profile, warning = choose_profile("tiny", 1280)
    assert profile == "tiny" and warning is not None and "tiny prior (2 layers) on a 1280-d dataset" in warning
    with pytest.raises(UserError, match="unknown profile 'huge'"):
        choose_profile("huge", 32)
    paper = write_dataset(tmp_path / "paper", [(2, 1)], d=1280)
    job = prepare_training(str(paper), str(tmp_path / "run"), None, TrainConfig(), False)
    assert (job.profile, job.model_config["num_layers"], job.warning) == ("paper", 10, None)
    job = prepare_training(str(paper), str(tmp_path / "run"), "tiny", TrainConfig(), False)
    assert (job.profile, job.model_config["num_layers"], job.model_config["embedding_dim"]) == ("tiny", 2, 1280)
    assert job.warning == warning


def test_learning_rate_warms_up_then_follows_the_schedule():
    t = TrainConfig().train
    t.warmup_steps, t.max_steps, t.min_lr_ratio = 10, 110, 0.1
    assert lr_factor(t, 0) == pytest.approx(0.1) and lr_factor(t, 9) == pytest.approx(1.0)
    assert lr_factor(t, 60) == pytest.approx(0.55) and lr_factor(t, 110) == pytest.approx(0.1)
    # a steps_per_run window from step 1000 to 1110: the same curve, shifted
    assert lr_factor(t, 1000, 1000, 1110) == pytest.approx(0.1)
    assert lr_factor(t, 1060, 1000, 1110) == pytest.approx(0.55)
    t.schedule = "linear"
    assert lr_factor(t, 60) == pytest.approx(0.55) and lr_factor(t, 35) == pytest.approx(0.775)
    t.schedule = "constant"
    assert lr_factor(t, 100) == 1.0


def test_config_defaults_file_overrides_and_checks(tmp_path):
    cfg = TrainConfig()
    # the paper's global batch (512 on each of 2 GPUs), one trainer per GPU, §3.1's mean-squared error
    assert (cfg.train.lr, cfg.train.batch_size, cfg.data.zero_control_prob) == (5e-5, 1024, 0.01)
    assert (cfg.train.steps_per_run, cfg.runtime.trainers, cfg.runtime.max_failures) == (0, 0, 3)
    assert (cfg.loss.lam, cfg.loss.tau, cfg.loss.reduction) == (loss_module.LAMBDA, 0.0, "mean")  # τ: 0.1·d
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1.0e-4\n  max_steps: 50\n")
    cfg = load_train_config(path, ["train.max_steps=20", "runtime.precision=bf16"])
    assert (cfg.train.lr, cfg.train.max_steps, cfg.runtime.precision) == (1e-4, 20, "bf16")
    with pytest.raises(UserError, match="unknown config key 'train.steps'; valid keys in train: batch_size"):
        load_train_config(None, ["train.steps=3"])
    with pytest.raises(UserError, match="train.steps_per_run must be ≥ 0 .got -1.; train.schedule must be one of "
                                        "cosine, linear, constant .got 'step'.; runtime.trainers must be ≥ 0"):
        load_train_config(None, ["train.schedule=step", "runtime.trainers=-1", "train.steps_per_run=-1"])


def test_cli_parses_and_lists_every_config_key(dataset, tmp_path, capsys):
    top = argparse.ArgumentParser(prog="lambda-eclipse")
    add_parser(top.add_subparsers(dest="command"))
    args = top.parse_args(["train-prior", "--data", str(dataset), "--output", str(tmp_path), "--set", "train.lr=1e-4",
                           "--resume", "--init-from", "runs/prior"])
    assert (args.profile, args.set, args.resume, args.init_from) == (None, ["train.lr=1e-4"], True, "runs/prior")
    with pytest.raises(SystemExit):
        top.parse_args(["train-prior", "--help"])
    text = capsys.readouterr().out
    for section, values in TrainConfig().to_dict().items():
        for key, value in values.items():
            assert f"{section}.{key}={value}" in text
    assert "Nightly retraining is exactly that: continue the current\nprior for train.steps_per_run more steps" in text
    bad = top.parse_args(["train-prior", "--data", str(dataset), "--output", str(tmp_path), "--set", "val.evry=3"])
    with pytest.raises(UserError, match="unknown config key 'val.evry'"):
        bad.run(bad)
    assert json.dumps(TrainConfig().to_dict())  # the config travels as JSON (summary, Prefect parameters)
