"""A train-prior run, prepared: everything it depends on checked before any work starts (a UserError in one line
otherwise), into the `TrainJob` its trainers are given (prior/job.py); prior/driver.py runs it."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

from diffusers.utils.constants import CONFIG_NAME

from lambda_eclipse.errors import UserError
from lambda_eclipse.profile import Profile
from prior.checkpoints import registered, training_state
from prior.config import PRIOR_PROFILES, TrainConfig, resolved_tau
from prior.data import open_dataset
from prior.job import TrainJob
from prior.model import prior_config
from prior.provenance import provenance
from storage.fs import join, location, name, process_local, resolve
from storage.layout import read_json
from storage.run_dir import checkpoints

PAPER_DIM = 1280  # the paper prior's CLIP (ViT-bigG-14) embedding size


def choose_profile(profile: str | None, embed_dim: int) -> tuple[Profile, str | None]:
    """The prior size for a dataset of `embed_dim`-d embeddings: paper for the paper CLIP's 1280, else tiny, unless
    `profile` says which; and a warning when a tiny prior is asked for on a paper dataset."""
    if profile is None:
        return (Profile.PAPER if embed_dim == PAPER_DIM else Profile.TINY), None
    chosen = Profile.parse(profile, allowed=PRIOR_PROFILES)
    if chosen is Profile.TINY and embed_dim == PAPER_DIM:
        return chosen, (f"training a tiny prior (2 layers) on a {PAPER_DIM}-d dataset, which the paper-size prior "
                        "is made for (--profile tiny was given; leave --profile out to train the paper size)")
    return chosen, None


def prepare_training(data: str, output: str, profile: str | None, cfg: TrainConfig, resume: bool,
                     init_from: str | None = None) -> TrainJob:
    out = location(output)
    if isinstance(out, Path):
        out = out.resolve()  # Ray Train workers run in directories of their own
    elif process_local(out):
        raise UserError(f"--output {output}: the run directory must be visible to every Ray worker: a local path "
                        "(on a cluster, a shared one) or an object store URL such as s3://bucket/runs/prior")
    source = location(data)
    if process_local(source):
        raise UserError(f"--data {data}: the dataset must be visible to every Ray worker: a local path (on a "
                        "cluster, a shared one) or an object store URL such as s3://bucket/data")
    dataset = open_dataset(source.resolve() if isinstance(source, Path) else source, cfg.data.skip_duplicates,
                           cfg.data.skip_leaks)
    profile, warning = choose_profile(profile, dataset.embed_dim)
    model_config = prior_config(profile, dataset.embed_dim if profile is Profile.TINY else None)
    if model_config["embedding_dim"] != dataset.embed_dim:
        raise UserError(
            f"the {profile} prior takes {model_config['embedding_dim']}-d CLIP embeddings, but dataset {data} has "
            f"{dataset.embed_dim}-d ones; build the dataset with the paper CLIP (ViT-bigG-14), or use --profile tiny"
        )
    try:
        fs, path = resolve(out)
        fs.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the run directory {output}: {exc.strerror or exc}") from None
    existing = checkpoints(out)
    if existing and not resume:
        raise UserError(f"{output} already holds checkpoints (latest {name(existing[-1])}); pass --resume to "
                        "continue that run, or use a new --output")
    # Ray Train resumes from the latest checkpoint it registered; this one (the latest registered, or complete when
    # the record is missing) serves when Ray holds none
    complete = registered(out, existing)
    start_from, same_run = (str(complete[-1]), True) if complete else (None, False)
    if start_from is None and init_from:
        start_from = training_state(init_from)
    if start_from:
        saved = read_json(join(start_from, CONFIG_NAME))
        differ = {k: (saved.get(k), v) for k, v in model_config.items() if saved.get(k) != v}
        if differ:
            raise UserError(f"checkpoint {start_from} is another model than profile {profile.value!r} on this "
                            f"dataset (checkpoint, this run): {differ}")
    # the run's τ for this dataset's embedding size, as the loss resolves it, recorded in the summary and the registry
    cfg = replace(cfg, loss=replace(cfg.loss, tau=resolved_tau(cfg.loss, dataset.embed_dim)))
    shards = len(dataset.splits["train"].shards)
    if shards < cfg.runtime.trainers:
        raise UserError(f"dataset {data} has {shards} shards with training samples; {cfg.runtime.trainers} "
                        "data-parallel trainers need at least one each (lower runtime.trainers)")
    return TrainJob(dataset, str(out), profile, cfg, model_config, start_from, same_run, uuid.uuid4().hex, warning,
                    provenance=provenance(dataset, cfg))
