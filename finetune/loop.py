"""A finetune-decoder run from its first (or resumed) step to `finetune.max_steps` (`finetune`): the steps of
finetune/trainer.py, the records of metrics.jsonl and the checkpoints between them, then the fine-tuned UNet and
finetune.json (finetune/job.py's OUTPUT)."""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from finetune.job import RECORD, UNET, FinetuneJob
from finetune.trainer import Trainer
from lambda_eclipse.errors import UserError
from storage.layout import write_json_atomic
from storage.run_dir import read_metrics, write_metrics

if TYPE_CHECKING:
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

log = logging.getLogger(__name__)


class Metrics:
    """metrics.jsonl: a resumed run drops what a killed run logged after its checkpoint, so it holds one history."""

    def __init__(self, output: Path, step: int):
        self.output = output
        self.history = [r for r in read_metrics(output) if r["step"] <= step]
        write_metrics(output, self.history)
        self.last: dict = self.history[-1] if self.history else {}

    def write(self, record: dict) -> None:
        self.history.append(record)
        write_metrics(self.output, self.history)
        self.last = record
        log.info("step %d: loss %.4g, grad norm %.3g, %.3g steps/s", record["step"], record["loss"],
                 record["grad_norm"], record["steps_per_s"])


def finetune(job: FinetuneJob) -> tuple[UNet2DConditionModel, dict]:
    """Train to `finetune.max_steps`, write OUTPUT (finetune/job.py) and return the UNet and finetune.json's record."""
    import torch

    cfg, out = job.cfg, Path(job.output)
    trainer = Trainer(job)
    (out / RECORD).unlink(missing_ok=True)  # a resumed run's UNet changes: finetune.json comes back with the new one
    metrics = Metrics(out, trainer.step)
    log.info("fine-tuning the %s decoder UNet on %d photo(s) of %d subject(s), %d px, steps %d → %d on %s (%s)",
             job.profile, len(trainer.photos), len(job.subjects), job.resolution, trainer.step,
             cfg.finetune.max_steps, job.device, job.precision)
    sums = torch.zeros(2, dtype=torch.float64, device=trainer.device)  # loss, grad norm since the last record
    since, started, first, seconds = trainer.step, time.perf_counter(), trainer.step, 0.0
    while trainer.step < cfg.finetune.max_steps:
        loss, grad_norm = trainer.train_step()
        sums += torch.stack([loss.double(), grad_norm.double()])
        last = trainer.step == cfg.finetune.max_steps
        if last or trainer.step % cfg.log.every == 0 or trainer.step % cfg.checkpoint.every == 0:
            loss_sum, grad_sum = sums.tolist()  # checked here, not every step: no host sync per step
            if not math.isfinite(loss_sum):
                raise UserError(f"the loss became NaN or infinite between steps {since} and {trainer.step}; stopped "
                                "without saving; lower finetune.lr (resume from the last checkpoint with --resume)")
            elapsed = time.perf_counter() - started
            seconds += elapsed
            n = trainer.step - since
            metrics.write({"step": trainer.step, "loss": loss_sum / n, "grad_norm": grad_sum / n,
                           "steps_per_s": n / elapsed, "lr": cfg.finetune.lr})
            sums.zero_()
            if last or trainer.step % cfg.checkpoint.every == 0:
                trainer.save_checkpoint()
            since, started = trainer.step, time.perf_counter()  # the checkpoint's time is not training time
    _save_unet(trainer.unet, out / UNET)
    record = {
        "profile": job.profile,
        "base_decoder": trainer.base_decoder,
        "unet": UNET,
        "steps": trainer.step,
        "resolution": job.resolution,
        "precision": job.precision,
        "embed_dim": int(trainer.references[0].embedding.shape[0]),
        "subjects": [{"name": s.name, "word": s.word, "folder": s.folder,
                      "photos": [r.record() for r in trainer.references if r.subject == s.name]}
                     for s in job.subjects],
        "models": trainer.model_ids | {"decoder": trainer.base_decoder},
        "config": cfg.to_dict(),
        "loss": metrics.last.get("loss"),
        "steps_per_s": (trainer.step - first) / seconds if seconds else None,  # this session's, checkpoints excluded
    }
    write_json_atomic(out / RECORD, record)  # last: a directory with finetune.json holds a complete decoder
    log.info("done: step %d, UNet %s", trainer.step, out / UNET)
    return trainer.unet, record


def _save_unet(unet: UNet2DConditionModel, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    unet.save_pretrained(tmp)
    shutil.rmtree(path, ignore_errors=True)  # an earlier, shorter run into this directory
    os.replace(tmp, path)
