"""A train-prior run: what its trainers are given (`TrainJob`, made by prior/prepare.py), how the prior was trained
(`training_record`) and where the run writes.

RUN_DIR layout (a local path or an fsspec URL; storage/run_dir.py lists its checkpoints and reads its metrics):
    checkpoints/step-NNNNNNNN/  config.json + diffusion_pytorch_model.safetensors (diffusers layout, loadable by the
                                released inference code) + training_state.pt (optimizer, scheduler, grad scaler, RNG
                                of every trainer, data position, step, the metrics so far); the last
                                `checkpoint.keep` are kept (Ray Train's checkpoint manager, whose record of them is
                                checkpoints/checkpoint_manager_snapshot.json)
    final/                      the last model, diffusers layout
    */training.json             in every checkpoint and final/: how the prior was trained (`training_record`: loss
                                settings, batch, dataset and its Canny settings), which generate --canny follows
    metrics.jsonl               one record per training window and per validation; tensorboard/ holds the same
    summary.json                the run's last step, paths and metrics, training.json's record and the provenance
                                (prior/provenance.py: the dataset's config hash, the shards read and their Parquet
                                sha256, the marked samples skipped, the dataset's leak check); written last
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lambda_eclipse.profile import Profile
from prior.config import TrainConfig
from prior.data import Dataset

FINAL, SUMMARY, TENSORBOARD = "final", "summary.json", "tensorboard"
TRAINING = "training.json"  # generate/prior_checkpoint.py reads it


@dataclass
class TrainJob:
    """Everything a trainer process needs (sent to Ray workers as is)."""

    data: Dataset
    output: str  # the run directory: an absolute local path or an fsspec URL
    profile: Profile
    cfg: TrainConfig
    model_config: dict
    start_from: str | None  # checkpoint to start from when Ray Train holds none of this run's
    same_run: bool  # start_from is this run's (--resume: data position kept) or another's (init_from: a new run)
    fit: str  # identifies this call of run_training: a worker restarted by Ray keeps its stopping step
    warning: str | None = None  # for the user, before training starts
    device: str = "cpu"  # "cpu" or "cuda": decided by run_training from the cluster's resources
    trainers: int = 1  # data-parallel trainers (Ray Train workers)
    provenance: dict | None = None  # what the prior is trained on (`provenance`), for summary.json


def training_record(job: TrainJob) -> dict:
    """How this prior was trained, in summary.json, every checkpoint's training.json and the prior registry."""
    return {
        "loss": dataclasses.asdict(job.cfg.loss),
        "batch": {"global": job.cfg.train.batch_size, "trainers": job.trainers,
                  "per_trainer": job.cfg.train.batch_size // job.trainers, "negatives": "global batch"},
        "dataset": job.data.root,
        "edge": job.data.edge,
        "subjects": job.data.subjects,
    }
