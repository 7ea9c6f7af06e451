"""train-prior configuration: one dataclass per section; defaults are the paper's values where it gives one.

Parsed like the build config (lambda_eclipse/config.py): defaults, then a YAML file, then `--set section.key=value`
overrides; an unknown section or key is an error naming the valid ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from lambda_eclipse.config import check_rules, load_config
from lambda_eclipse.device import DEVICES
from lambda_eclipse.device import DTYPE_NAMES as PRECISIONS
from lambda_eclipse.errors import UserError
from lambda_eclipse.profile import Profile

PRIOR_PROFILES = (Profile.TINY, Profile.PAPER)  # the prior sizes train-prior offers: prior/model.py's configs
SCHEDULES = ("cosine", "linear", "constant")


@dataclass
class TrainSection:
    # the global batch (paper: 512 on each of 2 GPUs): each of the runtime.trainers trainers takes batch_size / trainers
    batch_size: int = 1024
    max_steps: int = 100_000  # paper: ~100k iterations
    # > 0: train this many steps beyond the step the run starts from (--resume, init_from) instead of up to
    # max_steps, with the lr schedule (warm-up, then the decay) spanning those steps; nightly retraining continues
    # the current prior this way on the current dataset
    steps_per_run: int = 0
    lr: float = 5e-5  # peak learning rate (paper)
    warmup_steps: int = 1000  # linear warm-up from 0 to lr
    schedule: str = "cosine"  # after warm-up, down to min_lr_ratio · lr at max_steps: cosine | linear | constant
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.01  # AdamW
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 1.0  # max global gradient norm; 0: no clipping
    seed: int = 0


# prior/loss.py's choices; its docstring gives each one's provenance (the paper gives λ, not τ)
LOSS_REDUCTIONS = ("mean", "sum")  # prior/loss.py's REDUCTIONS (a test keeps them equal)
LOSS_SIMILARITIES = ("dot", "cosine")  # prior/loss.py's SIMILARITIES


@dataclass
class LossSection:
    # prior/loss.py's defaults (a test keeps them equal), written out so that the CLI's parser needs no torch
    lam: float = 0.2  # weight of the contrastive term of Eq. 1 (paper: 0.2)
    # its temperature (not in the paper; measured, prior/loss.py); 0: the similarity's own, 0.1·d with dot (128 at
    # d = 1280; 3.2 for the tiny profile's d = 32, whose logits 128 would leave near 0), 0.01 with cosine
    tau: float = 0.0
    reduction: str = "mean"  # squared error: mean (÷ d, §3.1's "mean-squared error") | sum (over dimensions)
    similarity: str = "dot"  # contrastive logits: dot (Eq. 1's inner product) | cosine (normalised, as CLIP)


@dataclass
class DataSection:
    zero_control_prob: float = 0.01  # fraction of samples whose edge embedding becomes the zero-image one (paper: 1 %)
    shuffle_buffer: int = 1000  # samples held per loader stream for shuffling across shards (~200 KB each at d=1280)
    loader_workers: int = 2  # DataLoader worker processes per trainer; 0: read in the training process
    # skip the samples `lambda-eclipse dedup` marked as semantic duplicates (DIR/marks/semantic_duplicates/)
    skip_duplicates: bool = True
    # skip the samples `lambda-eclipse decontaminate` marked as benchmark leaks (DIR/marks/leaks/)
    skip_leaks: bool = True
    RENAMED: ClassVar[dict[str, str]] = {"workers": "loader_workers"}


@dataclass
class ValSection:
    every: int = 1000  # steps between validations; 0: only at the end
    batch_size: int = 256  # per trainer: top-1 retrieval is measured within a batch of this size
    max_batches: int = 50  # per trainer and validation, to keep it cheap (the paper's val split is 0.4M); 0: all


@dataclass
class CheckpointSection:
    every: int = 1000
    keep: int = 3  # the last K checkpoints are kept


@dataclass
class LogSection:
    every: int = 50  # steps between training-metric records (TensorBoard, metrics.jsonl)


@dataclass
class RuntimeSection:
    device: str = "auto"  # auto: cuda when the Ray cluster has GPUs, else cpu
    precision: str = "auto"  # autocast dtype; auto: bf16 on cuda, fp32 on cpu
    trainers: int = 0  # data-parallel trainers (Ray Train workers); 0: one per GPU of the Ray cluster, 1 without GPUs
    cpus_per_trainer: float = 1  # Ray CPUs each trainer reserves (its torch threads)
    max_failures: int = 3  # trainer failures (a killed worker, a lost node) Ray recovers from, from the last checkpoint
    RENAMED: ClassVar[dict[str, str]] = {"workers": "trainers", "cpus_per_worker": "cpus_per_trainer"}


@dataclass
class TrainConfig:
    train: TrainSection = field(default_factory=TrainSection)
    loss: LossSection = field(default_factory=LossSection)
    data: DataSection = field(default_factory=DataSection)
    val: ValSection = field(default_factory=ValSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self) -> TrainConfig:
        """Reject values the training loop cannot run with, naming every bad key at once."""
        t, d, r = self.train, self.data, self.runtime
        rules = [
            ("train.batch_size", t.batch_size >= 1, "must be ≥ 1"),
            ("train.max_steps", t.max_steps >= 1, "must be ≥ 1"),
            ("train.steps_per_run", t.steps_per_run >= 0, "must be ≥ 0"),
            ("train.lr", t.lr > 0, "must be > 0"),
            ("train.warmup_steps", t.warmup_steps >= 0, "must be ≥ 0"),
            ("train.schedule", t.schedule in SCHEDULES, f"must be one of {', '.join(SCHEDULES)}"),
            ("train.min_lr_ratio", 0 <= t.min_lr_ratio <= 1, "must be in [0, 1]"),
            ("train.grad_clip", t.grad_clip >= 0, "must be ≥ 0"),
            ("loss.tau", self.loss.tau >= 0, "must be ≥ 0 (0: 0.1·d with similarity=dot, 0.01 with cosine)"),
            ("loss.reduction", self.loss.reduction in LOSS_REDUCTIONS, f"must be one of {', '.join(LOSS_REDUCTIONS)}"),
            ("loss.similarity", self.loss.similarity in LOSS_SIMILARITIES,
             f"must be one of {', '.join(LOSS_SIMILARITIES)}"),
            ("data.zero_control_prob", 0 <= d.zero_control_prob <= 1, "must be in [0, 1]"),
            ("data.shuffle_buffer", d.shuffle_buffer >= 1, "must be ≥ 1"),
            ("data.loader_workers", d.loader_workers >= 0, "must be ≥ 0"),
            ("val.every", self.val.every >= 0, "must be ≥ 0"),
            ("val.batch_size", self.val.batch_size >= 1, "must be ≥ 1"),
            ("val.max_batches", self.val.max_batches >= 0, "must be ≥ 0"),
            ("checkpoint.every", self.checkpoint.every >= 1, "must be ≥ 1"),
            ("checkpoint.keep", self.checkpoint.keep >= 1, "must be ≥ 1"),
            ("log.every", self.log.every >= 1, "must be ≥ 1"),
            ("runtime.device", r.device in DEVICES, f"must be one of {', '.join(DEVICES)}"),
            ("runtime.precision", r.precision in PRECISIONS, f"must be one of {', '.join(PRECISIONS)}"),
            ("runtime.trainers", r.trainers >= 0, "must be ≥ 0"),
            ("runtime.cpus_per_trainer", r.cpus_per_trainer > 0, "must be > 0"),
            ("runtime.max_failures", r.max_failures >= -1, "must be ≥ -1 (-1: no limit)"),
        ]
        check_rules(self, rules)
        if r.trainers:
            share(t.batch_size, r.trainers)
        return self


TAU_PER_DIM = 0.1  # loss.tau=0 with similarity=dot: 0.1·d (prior/loss.py's TAU at d = 1280)
TAU_COSINE = 0.01  # loss.tau=0 with similarity=cosine (prior/loss.py's TAU_COSINE)


def resolved_tau(loss: LossSection, embed_dim: int) -> float:
    """The temperature a run uses: `loss.tau`, or for 0 the similarity's own at the dataset's embedding size."""
    if loss.tau:
        return loss.tau
    return TAU_PER_DIM * embed_dim if loss.similarity == "dot" else TAU_COSINE


def capped_batch(batch_size: int, train_rows: int, trainers: int) -> int:
    """The global batch a run can use: `train.batch_size`, or, on a dataset with fewer training samples, the largest
    multiple of the trainer count within them (at least one per trainer), so that the contrastive term's in-batch
    negatives are other samples and not copies of the positive."""
    if batch_size <= train_rows:
        return batch_size
    return max(trainers, train_rows // trainers * trainers)


def share(batch_size: int, trainers: int) -> int:
    """Each trainer's part of the global batch `train.batch_size`; a UserError naming both when it does not divide."""
    if batch_size % trainers:
        raise UserError(f"train.batch_size={batch_size} (the global batch) does not divide among {trainers} "
                        "data-parallel trainers: choose a multiple of the trainer count, or another runtime.trainers")
    return batch_size // trainers



def load_train_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Defaults, then the YAML file's values, then `section.key=value` overrides, then the range checks."""
    return load_config(TrainConfig, path, overrides).check()
