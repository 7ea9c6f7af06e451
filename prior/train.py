"""Training of the λ-ECLIPSE prior on a built dataset (paper §3, Appendix C): Eq. 1 with AdamW.

`prepare_training` checks everything a run depends on and fails with a UserError before any work starts;
`run_training` runs `train_loop` on Ray Train (`TorchTrainer`: one worker per data-parallel trainer,
DistributedDataParallel when there are several, on the cluster's GPUs when it has any). Checkpoints go through
`ray.train.report` to the run directory, a local path or an fsspec URL (`s3://…`), never to a worker's own disk:
a training worker that dies is restarted by Ray (`FailureConfig(max_failures=runtime.max_failures)`) and the run
resumes from its last checkpoint, on any node, with the same result as an uninterrupted run.

RUN_DIR layout:
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
                                (`provenance`: the dataset's config hash, the shards read and their Parquet sha256,
                                the marked samples skipped, the dataset's leak check); written last

`train.batch_size` is the global batch: each of the trainers takes its share, and the contrastive term's softmax
runs over the texts of the whole global batch, gathered from every trainer (they are inputs, not outputs of the
model, so no gradient crosses trainers): the loss and the update are those of one trainer on the whole batch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import posixpath
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.utils.constants import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import load_file

from lambda_eclipse.device import torch_dtype
from lambda_eclipse.errors import UserError, WorkerError, ray_error_reason
from prior.config import PROFILES, TrainConfig, capped_batch, resolved_tau, share
from prior.data import Dataset, loader, open_dataset, to_device
from prior.loss import prior_loss
from prior.model import EclipsePrior, prior_config
from prior.provenance import provenance
from storage.fs import (
    Location,
    arrow,
    is_file,
    join,
    location,
    name,
    process_local,
    read_bytes,
    resolve,
    write_bytes,
)
from storage.layout import read_json, write_json_atomic

CHECKPOINTS, FINAL, STATE = "checkpoints", "final", "training_state.pt"
METRICS, SUMMARY, TENSORBOARD = "metrics.jsonl", "summary.json", "tensorboard"
TRAINING = "training.json"  # generate/prior_checkpoint.py reads it
PAPER_DIM = 1280  # the paper prior's CLIP (ViT-bigG-14) embedding size

log = logging.getLogger(__name__)


@dataclass
class TrainJob:
    """Everything a trainer process needs (sent to Ray workers as is)."""

    data: Dataset
    output: str  # the run directory: an absolute local path or an fsspec URL
    profile: str
    cfg: TrainConfig
    model_config: dict
    start_from: str | None  # checkpoint to start from when Ray Train holds none of this run's
    same_run: bool  # start_from is this run's (--resume: data position kept) or another's (init_from: a new run)
    fit: str  # identifies this call of run_training: a worker restarted by Ray keeps its stopping step
    warning: str | None = None  # for the user, before training starts
    device: str = "cpu"  # "cpu" or "cuda": decided by run_training from the cluster's resources
    trainers: int = 1  # data-parallel trainers (Ray Train workers)
    provenance: dict | None = None  # what the prior is trained on (`provenance`), for summary.json


def checkpoints(run: Location) -> list[str]:
    """The run's checkpoints, oldest first, as locations (paths or URLs)."""
    fs, path = resolve(join(run, CHECKPOINTS))
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return []
    names = sorted(n for n in (posixpath.basename(str(e).rstrip("/")) for e in entries) if n.startswith("step-"))
    return [str(join(run, CHECKPOINTS, n)) for n in names]


SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of the checkpoints it registered
CHECKPOINT_FILES = (CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, STATE)


def registered(run: Location, existing: list[str]) -> list[str]:
    """The checkpoints among `existing` that are whole: those Ray Train registered after uploading them, or, without
    its record, those holding every file. A run killed mid-upload leaves a partial step directory behind."""
    snapshot = join(run, CHECKPOINTS, SNAPSHOT)
    if is_file(snapshot):
        names = {r["checkpoint_dir_name"] for r in read_json(snapshot).get("checkpoint_results", [])}
        return [c for c in existing if name(c) in names]
    return [c for c in existing if all(is_file(join(c, f)) for f in CHECKPOINT_FILES)]


def choose_profile(profile: str | None, embed_dim: int) -> tuple[str, str | None]:
    """The prior size for a dataset of `embed_dim`-d embeddings: paper for the paper CLIP's 1280, else tiny, unless
    `profile` says which; and a warning when a tiny prior is asked for on a paper dataset."""
    if profile is None:
        return ("paper" if embed_dim == PAPER_DIM else "tiny"), None
    if profile not in PROFILES:
        raise UserError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")
    if profile == "tiny" and embed_dim == PAPER_DIM:
        return profile, (f"training a tiny prior (2 layers) on a {PAPER_DIM}-d dataset, which the paper-size prior "
                         "is made for (--profile tiny was given; leave --profile out to train the paper size)")
    return profile, None


def _parent(loc: Location) -> Location:
    loc = location(loc)
    return loc.parent if isinstance(loc, Path) else posixpath.dirname(loc)


def training_state(source: str) -> str:
    """The checkpoint holding the latest full training state of `source`: a checkpoint itself, a run directory (the
    checkpoint its summary.json names, or else its latest), or a run's final/."""
    loc = location(source)
    if isinstance(loc, Path):
        loc = loc.resolve()
    if is_file(join(loc, STATE)):
        return str(loc)
    run = _parent(loc) if name(loc) == FINAL and not checkpoints(loc) else loc
    candidates = checkpoints(run)
    if is_file(join(run, SUMMARY)):
        candidates.append(str(read_json(join(run, SUMMARY)).get("checkpoint", "")))
    for checkpoint in reversed(candidates):
        if checkpoint and is_file(join(checkpoint, STATE)):
            return checkpoint
    raise UserError(f"--init-from {source}: no training state there; give a train-prior run directory, its "
                    "final/, or one of its checkpoints/step-NNNNNNNN")


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
    model_config = prior_config(profile, dataset.embed_dim if profile == "tiny" else None)
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
    start_from, same_run = (complete[-1], True) if complete else (None, False)
    if start_from is None and init_from:
        start_from = training_state(init_from)
    if start_from:
        saved = read_json(join(start_from, CONFIG_NAME))
        differ = {k: (saved.get(k), v) for k, v in model_config.items() if saved.get(k) != v}
        if differ:
            raise UserError(f"checkpoint {start_from} is another model than profile {profile!r} on this dataset "
                            f"(checkpoint, this run): {differ}")
    # the run's τ for this dataset's embedding size, as the loss resolves it, recorded in the summary and the registry
    cfg = replace(cfg, loss=replace(cfg.loss, tau=resolved_tau(cfg.loss, dataset.embed_dim)))
    shards = len(dataset.splits["train"].shards)
    if shards < cfg.runtime.workers:
        raise UserError(f"dataset {data} has {shards} shards with training samples; {cfg.runtime.workers} "
                        "data-parallel trainers need at least one each (lower runtime.workers)")
    return TrainJob(dataset, str(out), profile, cfg, model_config, start_from, same_run, uuid.uuid4().hex, warning,
                    provenance=provenance(dataset, cfg))


def run_training(job: TrainJob) -> dict:
    """Train on Ray Train, then return the run's summary (written by rank 0 to the run directory, read from there)."""
    from lambda_eclipse.device import cluster_device
    from lambda_eclipse.ray_logs import relayed_logs
    from lambda_eclipse.ray_session import cluster_resources, ray_session

    r = job.cfg.runtime
    with ray_session():  # first: it sets what Ray reads when imported
        from ray.train import (
            CheckpointConfig,
            FailureConfig,
            RunConfig,
            ScalingConfig,
            TrainingFailedError,
            WorkerGroupError,
        )
        from ray.train.torch import TorchTrainer

        gpus = int(cluster_resources().get("GPU", 0))
        device = cluster_device(r.device, gpus)
        trainers = r.workers or (gpus if device == "cuda" else 1)
        shards = len(job.data.splits["train"].shards)
        if shards < trainers:
            raise UserError(f"dataset {job.data.root} has {shards} shards with training samples; {trainers} "
                            "data-parallel trainers need at least one each (set runtime.workers)")
        rows, wanted = sum(job.data.splits["train"].rows), job.cfg.train.batch_size
        batch = capped_batch(wanted, rows, trainers)
        if batch != wanted:
            log.warning("train.batch_size=%d is more than the dataset's %d training samples, so the batch would "
                        "repeat samples and the contrastive term's negatives would be copies of its positives; the "
                        "global batch is %d", wanted, rows, batch)
            train = replace(job.cfg.train, batch_size=batch)
            job = replace(job, cfg=replace(job.cfg, train=train))
        share(job.cfg.train.batch_size, trainers)
        job = replace(job, device=device, trainers=trainers)
        filesystem, path = arrow(job.output)
        log.info("training on %d Ray Train worker(s) on %s; checkpoints in %s", trainers, device,
                 join(job.output, CHECKPOINTS))
        try:
            with relayed_logs() as logs:
                result = TorchTrainer(
                    _ray_worker,
                    train_loop_config={"job": job, "logs": logs},
                    scaling_config=ScalingConfig(num_workers=trainers, use_gpu=device == "cuda",
                                                 resources_per_worker={"CPU": r.cpus_per_worker}),
                    run_config=RunConfig(
                        name=CHECKPOINTS, storage_path=path, storage_filesystem=filesystem,
                        checkpoint_config=CheckpointConfig(num_to_keep=job.cfg.checkpoint.keep),
                        failure_config=FailureConfig(max_failures=r.max_failures),
                    ),
                ).fit()
        except WorkerGroupError as exc:  # a trainer failed more than runtime.max_failures times
            failures = "; ".join(f"trainer {rank}: {ray_error_reason(error)}"
                                 for rank, error in sorted(exc.worker_failures.items()))
            raise WorkerError(f"train-prior failed after runtime.max_failures={r.max_failures} restarts: {failures}; "
                              f"{job.output} keeps its checkpoints: continue it with --resume") from exc
        except TrainingFailedError as exc:  # Ray Train's own controller failed
            raise WorkerError(f"train-prior failed: {ray_error_reason(exc)}") from exc
    if isinstance(result.return_value, str):  # a UserError in the trainers (a non-finite loss): no retry helps
        raise UserError(result.return_value)
    return read_json(join(job.output, SUMMARY))


def _ray_worker(config: dict) -> str | None:
    import ray.train

    label = f"trainer {ray.train.get_context().get_world_rank()}"
    try:
        with config["logs"].forwarding(label, __name__):  # progress and checkpoints in the flow's run log
            train_loop(config["job"])
    except UserError as exc:  # raised by every trainer alike (its cause is all-reduced); Ray would retry errors
        return str(exc)
    return None


def lr_factor(t, step: int, start: int = 0, stop: int | None = None) -> float:
    """Multiplier of the peak lr at `step` of a schedule window from `start` to `stop` (default: 0 to max_steps):
    linear warm-up, then the schedule down to min_lr_ratio at `stop`."""
    stop = t.max_steps if stop is None else stop
    step -= start
    if step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    progress = min(1.0, (step - t.warmup_steps) / max(1, stop - start - t.warmup_steps))
    decay = {"cosine": 0.5 * (1 + math.cos(math.pi * progress)), "linear": 1 - progress, "constant": 1.0}[t.schedule]
    return t.min_lr_ratio + (1 - t.min_lr_ratio) * decay


def _start_state(job: TrainJob) -> tuple[dict[str, torch.Tensor], dict, bool] | None:
    """Weights, training state and whether they are this run's: Ray Train's latest checkpoint of this run (after a
    restart, or --resume), else `job.start_from`, else None (a fresh start)."""
    import ray.train

    checkpoint, same_run = ray.train.get_checkpoint(), True
    if checkpoint is None and job.start_from:
        filesystem, path = arrow(job.start_from)
        checkpoint, same_run = ray.train.Checkpoint(path, filesystem=filesystem), job.same_run
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as local:
        weights = load_file(Path(local) / SAFETENSORS_WEIGHTS_NAME)
        state = torch.load(Path(local) / STATE, map_location="cpu", weights_only=True)
    log.info("starting from checkpoint %s (step %d, %s)", checkpoint.path, state["step"],
             "this run's" if same_run else "initialising a new run")
    return weights, state, same_run


def train_loop(job: TrainJob) -> None:
    cfg, t = job.cfg, job.cfg.train
    rank, world, device = _placement()
    amp = torch_dtype(cfg.runtime.precision, device.type, "training")
    torch.manual_seed(t.seed)
    model = EclipsePrior(**job.model_config)
    start = _start_state(job)
    if start:
        model.load_state_dict(start[0])
    model.to(device)  # pyright: ignore[reportArgumentType]  (diffusers' @wraps(Module.to) hides self)
    params = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel over all parameters, on CPU too, where it is ~4× faster than the default per-parameter loop
    optimizer = torch.optim.AdamW(params, lr=t.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay, fused=True)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)  # fp16 needs loss scaling, bf16 not
    # Every trainer's loader streams must hold shards: at most (train shards / trainers) loader workers each.
    workers = min(cfg.data.workers, len(job.data.splits["train"].shards) // world)
    per_trainer = share(t.batch_size, world)
    step, batches, history, same_run, window, state = 0, 0, [], False, None, {}
    if start:
        _, state, same_run = start
        step = state["step"]
        optimizer.load_state_dict(state["optimizer"])  # moves the moments to the parameters' device
        if same_run:
            batches, history = _restore(state, scaler, rank, world, workers, per_trainer, job.output)
            saved = state.get("schedule") or {}
            window = (saved["start"], saved["stop"]) if saved.get("fit") == job.fit else None
        else:  # a new run from another's state: the moments carry over, the hyperparameters are this run's
            for group in optimizer.param_groups:
                group.update(lr=t.lr, initial_lr=t.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay)
    # The learning-rate schedule spans 0…max_steps, or with train.steps_per_run this run's own steps (a warm
    # restart); a worker restarted by Ray within this run keeps the window its checkpoint recorded.
    window = window or ((step, step + t.steps_per_run) if t.steps_per_run else (0, t.max_steps))
    first, stop = window
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(t, s, first, stop))
    if same_run:
        scheduler.load_state_dict(state["scheduler"])
    scheduler.last_epoch = step
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base * lr_factor(t, step, first, stop)  # this step's (the window may be new)
    net = model
    if world > 1:
        import ray.train.torch

        net = ray.train.torch.prepare_model(model)  # DistributedDataParallel
    common: dict[str, Any] = dict(rank=rank, world=world, seed=t.seed, pin_memory=device.type == "cuda")
    train_batches = iter(loader(job.data, "train", per_trainer, workers, start=batches, buffer=cfg.data.shuffle_buffer,
                                zero_control_prob=cfg.data.zero_control_prob, **common))
    val_batches = loader(job.data, "val", cfg.val.batch_size, cfg.data.workers, **common)
    records = Records(job.output, history, step, enabled=rank == 0)
    meter = Window(device, world, per_trainer, step)
    checkpoint = CheckpointWriter(job, window, rank, world, workers)
    if rank == 0:
        log.info("training from step %d to %d on %d × %s, global batch %d (%d per trainer)", step, stop, world,
                 device, t.batch_size, per_trainer)
    if step >= stop and not same_run:  # a new run with nothing to train: it holds its start model, validated
        records.write("val", step, validate(model, val_batches, device, amp, cfg, world))
        checkpoint.save(step, batches, model, optimizer, scheduler, scaler, records)
    while step < stop:
        losses = step_losses(net, to_device(next(train_batches), device), cfg, amp, rank, world)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["total"]).backward()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip or math.inf, foreach=True)
        scaler.step(optimizer)
        scaler.update()
        lr = optimizer.param_groups[0]["lr"]  # the one this step used
        scheduler.step()
        step, batches = step + 1, batches + 1
        meter.add(losses, grad_norm)

        last = step == stop
        validate_now = last or (cfg.val.every > 0 and step % cfg.val.every == 0)
        checkpoint_now = last or step % cfg.checkpoint.every == 0
        if validate_now or checkpoint_now or step % cfg.log.every == 0:
            # Checked here, not every step, to keep the GPU queue free of host syncs; nothing is saved after it.
            train_metrics = meter.flush(step, job.output)
            records.write("train", step, train_metrics | {"lr": lr})
        if validate_now:
            records.write("val", step, validate(model, val_batches, device, amp, cfg, world))
        if checkpoint_now:
            checkpoint.save(step, batches, model, optimizer, scheduler, scaler, records)
    if rank == 0:
        _save_final(model, join(job.output, FINAL), training_record(job))
        own = str(join(job.output, CHECKPOINTS, f"step-{step:08d}"))
        write_json_atomic(join(job.output, SUMMARY), {
            "step": step,
            "final": str(join(job.output, FINAL)),
            "checkpoint": own if is_file(join(own, STATE)) else checkpoints(job.output)[-1],
            "profile": job.profile,
            "started_from": job.start_from if not same_run else None,
            **training_record(job),
            "provenance": job.provenance,
            "train": records.last.get("train"),
            "val": records.last.get("val"),
        })
    records.close()


def step_losses(net, batch: dict[str, torch.Tensor], cfg: TrainConfig, amp: torch.dtype, rank: int,
                world: int) -> dict[str, torch.Tensor]:
    """Eq. 1 on this trainer's share of the global batch, its softmax over the global batch's texts. Averaged over
    the trainers (DistributedDataParallel averages the gradients) it is the loss of the whole batch on one trainer:
    equal shares, and every term a mean over this trainer's rows."""
    target = batch.pop("target")
    device = target.device
    with torch.autocast(device.type, dtype=amp, enabled=amp != torch.float32):
        predicted = net(**batch, return_dict=False)
    texts = batch["proj_embedding"]
    if world > 1:
        gathered = [torch.empty_like(texts) for _ in range(world)]
        torch.distributed.all_gather(gathered, texts.contiguous())
        texts = torch.cat(gathered)
    tau = resolved_tau(cfg.loss, target.shape[-1])
    return prior_loss(predicted, target, batch["proj_embedding"], cfg.loss.lam, tau,
                      reduction=cfg.loss.reduction, similarity=cfg.loss.similarity, texts=texts,
                      offset=rank * len(target))


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


def _placement() -> tuple[int, int, torch.device]:
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    return context.get_world_rank(), context.get_world_size(), ray.train.torch.get_device()


def _all_reduce(tensor: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        torch.distributed.all_reduce(tensor)
    return tensor


class Window:
    """Loss terms and gradient norms summed on the device between two records (no host sync per step)."""

    def __init__(self, device: torch.device, world: int, batch_size: int, step: int):
        self.device, self.world, self.batch_size = device, world, batch_size
        self._reset(step)

    def _reset(self, step: int) -> None:
        # steps, total, mse, contrastive, grad_norm, non-finite steps
        self.sums = torch.zeros(6, dtype=torch.float64, device=self.device)
        self.start_step, self.start_time = step, time.perf_counter()

    def add(self, losses: dict[str, torch.Tensor], grad_norm: torch.Tensor) -> None:
        values = torch.stack([losses["total"], losses["mse"], losses["contrastive"], grad_norm.float()]).double()
        bad = ~torch.isfinite(values[:1])  # the total; an infinite gradient norm is routine under fp16 loss scaling
        self.sums += torch.cat([values.new_ones(1), values, bad.double()])

    def flush(self, step: int, run: str) -> dict:
        sums = _all_reduce(self.sums, self.world).tolist()
        elapsed = time.perf_counter() - self.start_time
        if sums[5]:
            latest = checkpoints(run)
            advice = (f"the last good checkpoint is {latest[-1]}: resume from it with a lower learning rate "
                      "(--resume --set train.lr=…)" if latest else "no checkpoint was written: lower train.lr")
            raise UserError(f"the training loss became NaN or infinite between steps {self.start_step} and {step}; "
                            f"stopped without saving; {advice}, or check the data")
        n = sums[0]
        metrics = {
            "loss": sums[1] / n, "mse": sums[2] / n, "contrastive": sums[3] / n, "grad_norm": sums[4] / n,
            "samples_per_s": (step - self.start_step) * self.batch_size * self.world / elapsed,
        }
        self._reset(step)
        return metrics


@torch.no_grad()
def validate(model: EclipsePrior, batches, device: torch.device, amp: torch.dtype, cfg: TrainConfig,
             world: int) -> dict:
    """Eq. 1 on the val split, mean cosine(predicted, target), and top-1 retrieval of the target within each batch."""
    model.eval()
    sums = torch.zeros(6, dtype=torch.float64, device=device)  # samples, total, mse, contrastive, cosine, hits
    for batch in islice(batches, cfg.val.max_batches or None):
        batch = to_device(batch, device)
        target = batch.pop("target")
        with torch.autocast(device.type, dtype=amp, enabled=amp != torch.float32):
            predicted = model(**batch, return_dict=False).float()
        losses = prior_loss(predicted, target, batch["proj_embedding"], cfg.loss.lam,
                            resolved_tau(cfg.loss, target.shape[-1]), reduction=cfg.loss.reduction,
                            similarity=cfg.loss.similarity)
        similarity = F.normalize(predicted, dim=-1) @ F.normalize(target, dim=-1).T
        n = len(predicted)
        hits = (similarity.argmax(dim=1) == torch.arange(n, device=device)).sum()
        sums += torch.stack([
            torch.tensor(n, device=device), losses["total"] * n, losses["mse"] * n, losses["contrastive"] * n,
            similarity.diagonal().sum(), hits,
        ]).double()
    model.train()
    n, total, mse, contrastive, cosine, hits = _all_reduce(sums, world).tolist()
    return {"loss": total / n, "mse": mse / n, "contrastive": contrastive / n, "cosine": cosine / n, "top1": hits / n}


def _rng_state() -> dict:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


class CheckpointWriter:
    """Checkpoints through `ray.train.report`: rank 0 writes one into a local temporary directory and Ray Train
    uploads it to RUN_DIR/checkpoints/step-NNNNNNNN, registers it (the latest is what a restarted worker gets from
    `ray.train.get_checkpoint`) and deletes those beyond `checkpoint.keep`. Every trainer calls it: it is a barrier."""

    def __init__(self, job: TrainJob, window: tuple[int, int], rank: int, world: int, workers: int):
        self.job, self.window, self.rank, self.world, self.workers = job, window, rank, world, workers

    def save(self, step: int, batches: int, model, optimizer, scheduler, scaler, records: Records) -> None:
        import ray.train

        rng: list[dict | None] = [None] * self.world
        if self.world > 1:
            torch.distributed.all_gather_object(rng, _rng_state())
        else:
            rng[0] = _rng_state()
        with tempfile.TemporaryDirectory(prefix="prior-checkpoint-", ignore_cleanup_errors=True) as tmp:
            checkpoint = None
            if self.rank == 0:
                model.save_pretrained(tmp)
                write_json_atomic(Path(tmp) / TRAINING, training_record(self.job))
                torch.save(
                    {
                        "step": step,
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(),
                        "rng": rng,
                        # Batches consumed per trainer from this run's dataset; the order they came in depends on
                        # the layout, stored to compare on resume.
                        "data": {"batches": batches, "world": self.world, "workers": self.workers,
                                 "batch_size": share(self.job.cfg.train.batch_size, self.world)},
                        "schedule": {"start": self.window[0], "stop": self.window[1], "fit": self.job.fit},
                        "metrics": records.history,
                    },
                    Path(tmp) / STATE,
                )
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report({"step": step}, checkpoint=checkpoint, checkpoint_dir_name=f"step-{step:08d}")
        if self.rank == 0:
            log.info("step %d: checkpoint %s", step, join(self.job.output, CHECKPOINTS, f"step-{step:08d}"))


def _restore(state: dict, scaler, rank: int, world: int, workers: int, batch_size: int,
             run: str) -> tuple[int, list[dict]]:
    """Restore this run's grad scaler and RNG; its data position and metrics history."""
    scaler.load_state_dict(state["scaler"])
    data = state["data"]
    if (data["world"], data["workers"], data["batch_size"]) != (world, workers, batch_size):
        log.warning("resuming with %d trainers × %d loader workers × batch %d (was %d × %d × %d): the data order "
                    "from here on differs from the uninterrupted run's", world, workers, batch_size,
                    data["world"], data["workers"], data["batch_size"])
    if len(state["rng"]) == world:
        rng = state["rng"][rank]
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    history = state["metrics"] if "metrics" in state else read_metrics(run)  # checkpoints before they held them
    return data["batches"], history


def _upload(local: Path, loc: Location) -> None:
    """Copy the files of a local directory to `loc` (a path or URL), replacing what was there."""
    fs, path = resolve(loc)
    if fs.exists(path):
        fs.rm(path, recursive=True)
    fs.makedirs(path, exist_ok=True)
    for file in sorted(local.iterdir()):
        fs.put_file(str(file), f"{path}/{file.name}")


def _save_final(model: EclipsePrior, loc: Location, record: dict) -> None:
    with tempfile.TemporaryDirectory(prefix="prior-final-") as tmp:
        model.save_pretrained(tmp)
        write_json_atomic(Path(tmp) / TRAINING, record)
        _upload(Path(tmp), loc)


class Records:
    """metrics.jsonl and TensorBoard, written by rank 0 into a scratch directory of its node and copied to the run
    directory after each record (so they are there whatever happens to the node); a resumed run starts from the
    history its checkpoint holds, so both show one consistent history."""

    def __init__(self, run: str, history: list[dict], step: int, enabled: bool):
        self.history = [r for r in history if r["step"] <= step]
        self.last: dict[str, dict] = {r["split"]: r for r in self.history}
        self.enabled, self.run = enabled, run
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.scratch = Path(tempfile.mkdtemp(prefix="train-prior-records-"))
        # purge_step: TensorBoard drops what an interrupted attempt logged after the step this one starts from
        self.tensorboard = SummaryWriter(str(self.scratch), purge_step=step + 1 if step else None)
        self._sync()

    def write(self, split: str, step: int, values: dict) -> None:
        record = {"step": step, "split": split} | values
        self.history.append(record)
        self.last[split] = record
        if not self.enabled:
            return
        for key, value in values.items():
            self.tensorboard.add_scalar(f"{split}/{key}", value, step)
        self._sync()
        log.info("step %d %s: %s", step, split, ", ".join(f"{k} {v:.4g}" for k, v in values.items()))

    def _sync(self) -> None:
        write_bytes(join(self.run, METRICS), "".join(json.dumps(r) + "\n" for r in self.history).encode())
        self.tensorboard.flush()
        fs, path = resolve(join(self.run, TENSORBOARD))
        fs.makedirs(path, exist_ok=True)
        for file in self.scratch.iterdir():
            fs.put_file(str(file), f"{path}/{file.name}")

    def close(self) -> None:
        if self.enabled:
            self.tensorboard.close()
            self._sync()
            shutil.rmtree(self.scratch, ignore_errors=True)


def read_metrics(run: Location) -> list[dict]:
    loc = join(run, METRICS)
    if not is_file(loc):
        return []
    return [json.loads(line) for line in read_bytes(loc).decode().splitlines()]
