"""The prior's training loop, on each Ray Train worker (prior/driver.py starts them): Eq. 1 with AdamW (paper §3,
Appendix C), the learning-rate schedule, validation.

`train.batch_size` is the global batch: each of the trainers takes its share, and the contrastive term's softmax
runs over the texts of the whole global batch, gathered from every trainer (they are inputs, not outputs of the
model, so no gradient crosses trainers): the loss and the update are those of one trainer on the whole batch.
"""

from __future__ import annotations

import logging
import math
from itertools import islice
from typing import Any

import torch
import torch.nn.functional as F

from lambda_eclipse.device import torch_dtype
from prior.checkpoints import CheckpointWriter, finish, restore, start_state
from prior.config import TrainConfig, resolved_tau, share
from prior.data import loader, to_device
from prior.job import TrainJob
from prior.loss import prior_loss
from prior.model import EclipsePrior
from prior.records import Records, Window, all_reduce

log = logging.getLogger(__name__)


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


def _placement() -> tuple[int, int, torch.device]:
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    return context.get_world_rank(), context.get_world_size(), ray.train.torch.get_device()


def train_loop(job: TrainJob) -> None:
    cfg, t = job.cfg, job.cfg.train
    rank, world, device = _placement()
    amp = torch_dtype(cfg.runtime.precision, device.type, "training")
    torch.manual_seed(t.seed)
    model = EclipsePrior(**job.model_config)
    start = start_state(job)
    if start:
        model.load_state_dict(start[0])
    model.to(device)  # pyright: ignore[reportArgumentType]  (diffusers' @wraps(Module.to) hides self)
    params = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel over all parameters, on CPU too, where it is ~4× faster than the default per-parameter loop
    optimizer = torch.optim.AdamW(params, lr=t.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay, fused=True)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)  # fp16 needs loss scaling, bf16 not
    # Every trainer's loader streams must hold shards: at most (train shards / trainers) loader workers each.
    workers = min(cfg.data.loader_workers, len(job.data.splits["train"].shards) // world)
    per_trainer = share(t.batch_size, world)
    step, batches, history, same_run, window, state = 0, 0, [], False, None, {}
    if start:
        _, state, same_run = start
        step = state["step"]
        optimizer.load_state_dict(state["optimizer"])  # moves the moments to the parameters' device
        if same_run:
            batches, history = restore(state, scaler, rank, world, workers, per_trainer, job.output)
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
    val_batches = loader(job.data, "val", cfg.val.batch_size, cfg.data.loader_workers, **common)
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
        finish(job, model, step, same_run, records)
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
    n, total, mse, contrastive, cosine, hits = all_reduce(sums, world).tolist()
    return {"loss": total / n, "mse": mse / n, "contrastive": contrastive / n, "cosine": cosine / n, "top1": hits / n}
