"""Training of the λ-ECLIPSE prior on a built dataset (paper §3, Appendix C): Eq. 1 with AdamW.

`prepare_training` checks everything a run depends on and fails with a UserError before any work starts;
`run_training` runs `train_loop` in this process, or in one Ray Train worker per data-parallel trainer
(`TorchTrainer`, DistributedDataParallel) when `runtime.workers` asks for more than one.

RUN_DIR layout:
    checkpoints/step-NNNNNNNN/  config.json + diffusion_pytorch_model.safetensors (diffusers layout, loadable by the
                                released inference code) + training_state.pt (optimizer, scheduler, grad scaler, RNG
                                of every trainer, data position, step); written under a temporary name and renamed,
                                so a kill never leaves a half checkpoint; the last `checkpoint.keep` are kept
    final/                      the last model, diffusers layout
    metrics.jsonl               one record per training window and per validation; tensorboard/ holds the same
    summary.json                the run's last step, paths and metrics
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from lambda_eclipse.errors import UserError
from prior.config import PROFILES, TrainConfig
from prior.data import Dataset, loader, open_dataset, to_device
from prior.loss import prior_loss
from prior.model import EclipsePrior, prior_config
from storage.fs import is_local
from storage.layout import read_json, write_json_atomic

CHECKPOINTS, FINAL, STATE = "checkpoints", "final", "training_state.pt"
WEIGHTS = "diffusion_pytorch_model.safetensors"
METRICS, SUMMARY = "metrics.jsonl", "summary.json"
AMP_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

log = logging.getLogger(__name__)


@dataclass
class TrainJob:
    """Everything a trainer process needs (sent to Ray workers as is)."""

    data: Dataset
    output: str
    cfg: TrainConfig
    model_config: dict
    device: str  # "cpu" or "cuda"
    trainers: int  # data-parallel trainers; 1: this process
    resume_from: str | None  # checkpoint directory


def checkpoints(run: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary `.step-*.tmp` directories do not match)."""
    base = Path(run) / CHECKPOINTS
    return sorted(base.glob("step-*")) if base.is_dir() else []


def prepare_training(data: str, output: str, profile: str, cfg: TrainConfig, resume: bool) -> TrainJob:
    if profile not in PROFILES:
        raise UserError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")
    dataset = open_dataset(data)
    model_config = prior_config(profile, dataset.embed_dim if profile == "tiny" else None)
    if model_config["embedding_dim"] != dataset.embed_dim:
        raise UserError(
            f"the {profile} prior takes {model_config['embedding_dim']}-d CLIP embeddings, but dataset {data} has "
            f"{dataset.embed_dim}-d ones; build the dataset with the paper CLIP (ViT-bigG-14), or use --profile tiny"
        )
    if not is_local(output):
        raise UserError(f"--output {output}: the run directory must be a local path (checkpoints and TensorBoard "
                        "logs are written in place); --data may be a URL")
    run = Path(output)
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the run directory {run}: {exc.strerror}") from None
    existing = checkpoints(run)
    if existing and not resume:
        raise UserError(f"{run} already holds checkpoints (latest {existing[-1].name}); pass --resume to continue "
                        "that run, or use a new --output")
    if existing:
        saved = read_json(existing[-1] / "config.json")
        differ = {k: (saved.get(k), v) for k, v in model_config.items() if saved.get(k) != v}
        if differ:
            raise UserError(f"checkpoint {existing[-1]} is another model than profile {profile!r} on this dataset "
                            f"(checkpoint, this run): {differ}")
    cuda = cfg.runtime.device == "cuda" or (cfg.runtime.device == "auto" and torch.cuda.is_available())
    device = "cuda" if cuda else "cpu"
    trainers = cfg.runtime.workers or max(torch.cuda.device_count() if device == "cuda" else 1, 1)
    shards = len(dataset.splits["train"].shards)
    if shards < trainers:
        raise UserError(f"dataset {data} has {shards} shards with training samples; {trainers} data-parallel "
                        "trainers need at least one each (lower runtime.workers)")
    return TrainJob(dataset, str(run), cfg, model_config, device, trainers,
                    str(existing[-1]) if existing else None)


def run_training(job: TrainJob) -> dict:
    """Train, then return the run's summary (the same in both placements: rank 0 writes it to RUN_DIR)."""
    if job.trainers == 1:
        train_loop(job)
    else:
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
        from ray.train.v2.api.exceptions import WorkerGroupError

        from lambda_eclipse.ray_session import ray_session

        trainer = TorchTrainer(
            _ray_worker,
            train_loop_config={"job": job},
            scaling_config=ScalingConfig(num_workers=job.trainers, use_gpu=job.device == "cuda"),
            run_config=RunConfig(name="train-prior", storage_path=str(Path(job.output).resolve() / "ray")),
        )
        with ray_session():
            try:
                trainer.fit()
            except WorkerGroupError as exc:  # a UserError in a trainer (a non-finite loss) reaches the user as is
                for failure in exc.worker_failures.values():
                    cause = getattr(failure, "cause", failure)
                    if isinstance(cause, UserError):
                        raise cause from None
                raise
    return read_json(Path(job.output) / SUMMARY)


def _ray_worker(config: dict) -> None:
    train_loop(config["job"])


def lr_factor(t, step: int) -> float:
    """Multiplier of the peak lr at `step`: linear warm-up, then the schedule down to min_lr_ratio at max_steps."""
    if step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    progress = min(1.0, (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps))
    decay = {"cosine": 0.5 * (1 + math.cos(math.pi * progress)), "linear": 1 - progress, "constant": 1.0}[t.schedule]
    return t.min_lr_ratio + (1 - t.min_lr_ratio) * decay


def train_loop(job: TrainJob) -> None:
    cfg, t = job.cfg, job.cfg.train
    rank, world, device = _placement(job)
    amp = AMP_DTYPES[cfg.runtime.precision] if cfg.runtime.precision != "auto" else (
        torch.bfloat16 if device.type == "cuda" else torch.float32)
    torch.manual_seed(t.seed)
    model = EclipsePrior(**job.model_config)
    if job.resume_from:
        model.load_state_dict(load_file(Path(job.resume_from) / WEIGHTS))
    model.to(device)  # pyright: ignore[reportArgumentType]  (diffusers' @wraps(Module.to) hides self)
    params = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel over all parameters, on CPU too, where it is ~4× faster than the default per-parameter loop
    optimizer = torch.optim.AdamW(params, lr=t.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(t, s))
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)  # fp16 needs loss scaling, bf16 not
    # Every trainer's loader streams must hold shards: at most (train shards / trainers) loader workers each.
    workers = min(cfg.data.workers, len(job.data.splits["train"].shards) // world)
    step = 0
    if job.resume_from:
        step = _restore(Path(job.resume_from), optimizer, scheduler, scaler, rank, world, workers, t.batch_size)
    net = model
    if world > 1:
        import ray.train.torch

        net = ray.train.torch.prepare_model(model)  # DistributedDataParallel
    common: dict[str, Any] = dict(rank=rank, world=world, seed=t.seed, pin_memory=device.type == "cuda")
    batches = iter(loader(job.data, "train", t.batch_size, workers, start=step, buffer=cfg.data.shuffle_buffer,
                          zero_control_prob=cfg.data.zero_control_prob, **common))
    val_batches = loader(job.data, "val", cfg.val.batch_size, cfg.data.workers, **common)
    records = Records(Path(job.output), step, enabled=rank == 0)
    window = Window(device, world, t.batch_size)
    if rank == 0:
        log.info("training from step %d to %d on %d × %s, batch %d per trainer",
                 step, t.max_steps, world, device, t.batch_size)
    while step < t.max_steps:
        batch = to_device(next(batches), device)
        target = batch.pop("target")
        with torch.autocast(device.type, dtype=amp, enabled=amp != torch.float32):
            predicted = net(**batch, return_dict=False)
        losses = prior_loss(predicted, target, batch["proj_embedding"], cfg.loss.lam, cfg.loss.tau)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["total"]).backward()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip or math.inf, foreach=True)
        scaler.step(optimizer)
        scaler.update()
        lr = scheduler.get_last_lr()[0]  # the one this step used
        scheduler.step()
        step += 1
        window.add(losses, grad_norm)

        last = step == t.max_steps
        validate_now = last or (cfg.val.every > 0 and step % cfg.val.every == 0)
        checkpoint_now = last or step % cfg.checkpoint.every == 0
        if validate_now or checkpoint_now or step % cfg.log.every == 0:
            # Checked here, not every step, to keep the GPU queue free of host syncs; nothing is saved after it.
            train_metrics = window.flush(step, job.output)
            records.write("train", step, train_metrics | {"lr": lr})
        if validate_now:
            records.write("val", step, validate(model, val_batches, device, amp, cfg, world))
        if checkpoint_now:
            save_checkpoint(Path(job.output), step, model, optimizer, scheduler, scaler, rank, world, workers, cfg)
    if rank == 0:
        _save_final(model, Path(job.output) / FINAL)
        write_json_atomic(Path(job.output) / SUMMARY, {
            "step": step,
            "final": str(Path(job.output) / FINAL),
            "checkpoint": str(checkpoints(job.output)[-1]),
            "train": records.last.get("train"),
            "val": records.last.get("val"),
        })
    records.close()


def _placement(job: TrainJob) -> tuple[int, int, torch.device]:
    if job.trainers == 1:
        return 0, 1, torch.device(job.device)
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

    def __init__(self, device: torch.device, world: int, batch_size: int):
        self.device, self.world, self.batch_size = device, world, batch_size
        self._reset(0)

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
        losses = prior_loss(predicted, target, batch["proj_embedding"], cfg.loss.lam, cfg.loss.tau)
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


def save_checkpoint(run: Path, step: int, model, optimizer, scheduler, scaler, rank: int, world: int, workers: int,
                    cfg: TrainConfig) -> None:
    rng: list[dict | None] = [None] * world
    if world > 1:
        torch.distributed.all_gather_object(rng, _rng_state())
    else:
        rng[0] = _rng_state()
    target = run / CHECKPOINTS / f"step-{step:08d}"
    if rank != 0 or target.exists():  # exists: this run resumed from it and had no step left to train
        return
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
    model.save_pretrained(tmp)
    torch.save(
        {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng,
            # Batches consumed per trainer; the order they came in depends on the layout, stored to compare on resume.
            "data": {"batches": step, "world": world, "workers": workers, "batch_size": cfg.train.batch_size},
        },
        tmp / STATE,
    )
    os.replace(tmp, target)
    for old in checkpoints(run)[: -cfg.checkpoint.keep]:
        shutil.rmtree(old)
    log.info("step %d: checkpoint %s", step, target)


def _restore(path: Path, optimizer, scheduler, scaler, rank: int, world: int, workers: int, batch_size: int) -> int:
    state = torch.load(path / STATE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])  # moves the moments to the parameters' device
    scheduler.load_state_dict(state["scheduler"])
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
    return data["batches"]


def _save_final(model: EclipsePrior, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)  # a previous, shorter run of this directory
    os.replace(tmp, path)


class Records:
    """metrics.jsonl and TensorBoard, written by rank 0; a resumed run drops what a killed run logged after its
    checkpoint, so both show one consistent history."""

    def __init__(self, run: Path, step: int, enabled: bool):
        self.last: dict[str, dict] = {}
        self.enabled = enabled
        if not enabled:
            return
        self.path = run / METRICS
        kept = [r for r in read_metrics(run) if r["step"] <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        for r in kept:
            self.last[r["split"]] = r
        from torch.utils.tensorboard import SummaryWriter

        self.tensorboard = SummaryWriter(str(run / "tensorboard"), purge_step=step + 1 if step else None)

    def write(self, split: str, step: int, values: dict) -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": split} | values
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for name, value in values.items():
            self.tensorboard.add_scalar(f"{split}/{name}", value, step)
        self.last[split] = record
        log.info("step %d %s: %s", step, split, ", ".join(f"{k} {v:.4g}" for k, v in values.items()))

    def close(self) -> None:
        if self.enabled:
            self.tensorboard.close()


def read_metrics(run: str | Path) -> list[dict]:
    path = Path(run) / METRICS
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
