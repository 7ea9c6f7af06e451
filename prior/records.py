"""What a train-prior run records of its training: the loss terms and gradient norms of each window between two
records, summed on the device and checked there (`Window`), and the records themselves in the run directory's
metrics.jsonl and tensorboard/ (`Records`)."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

import torch

from lambda_eclipse.errors import UserError
from prior.job import TENSORBOARD
from storage.fs import join, resolve
from storage.run_dir import checkpoints, write_metrics

log = logging.getLogger(__name__)


def all_reduce(tensor: torch.Tensor, world: int) -> torch.Tensor:
    """`tensor` summed over the `world` trainers, in place."""
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
        sums = all_reduce(self.sums, self.world).tolist()
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
        write_metrics(self.run, self.history)
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
