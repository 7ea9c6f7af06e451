"""What a train-prior run saves and starts from (prior/job.py's RUN_DIR): its checkpoints, written through Ray Train
(`CheckpointWriter`) and read back (`start_state`, `restore`), which of them are whole (`registered`) and which
holds a run's latest training state (`training_state`); and the run's end: final/ and summary.json (`finish`)."""

from __future__ import annotations

import logging
import posixpath
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from diffusers.utils.constants import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import load_file

from lambda_eclipse.errors import UserError
from prior.config import share
from prior.job import FINAL, SUMMARY, TRAINING, TrainJob, training_record
from storage.fs import Location, arrow, is_file, join, location, name, resolve
from storage.layout import read_json, write_json_atomic
from storage.run_dir import CHECKPOINTS, STATE, capture_rng, checkpoint_name, checkpoints, read_metrics, restore_rng

if TYPE_CHECKING:
    from prior.model import EclipsePrior
    from prior.records import Records

SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of the checkpoints it registered
CHECKPOINT_FILES = (CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, STATE)

log = logging.getLogger(__name__)


def registered(run: Location, existing: list[Location]) -> list[Location]:
    """The checkpoints among `existing` that are whole: those Ray Train registered after uploading them, or, without
    its record, those holding every file. A run killed mid-upload leaves a partial step directory behind."""
    snapshot = join(run, CHECKPOINTS, SNAPSHOT)
    if is_file(snapshot):
        names = {r["checkpoint_dir_name"] for r in read_json(snapshot).get("checkpoint_results", [])}
        return [c for c in existing if name(c) in names]
    return [c for c in existing if all(is_file(join(c, f)) for f in CHECKPOINT_FILES)]


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
    candidates = [str(c) for c in checkpoints(run)]
    if is_file(join(run, SUMMARY)):
        candidates.append(str(read_json(join(run, SUMMARY)).get("checkpoint", "")))
    for checkpoint in reversed(candidates):
        if checkpoint and is_file(join(checkpoint, STATE)):
            return checkpoint
    raise UserError(f"--init-from {source}: no training state there; give a train-prior run directory, its "
                    "final/, or one of its checkpoints/step-NNNNNNNN")


class CheckpointWriter:
    """Checkpoints through `ray.train.report`: rank 0 writes one into a local temporary directory and Ray Train
    uploads it to RUN_DIR/checkpoints/step-NNNNNNNN, registers it (the latest is what a restarted worker gets from
    `ray.train.get_checkpoint`) and deletes those beyond `checkpoint.keep`. Every trainer calls it: it is a barrier."""

    def __init__(self, job: TrainJob, window: tuple[int, int], rank: int, world: int, workers: int):
        self.job, self.window, self.rank, self.world, self.workers = job, window, rank, world, workers

    def save(self, step: int, batches: int, model, optimizer, scheduler, scaler, records: Records) -> None:
        import ray.train

        rng: list[dict | None] = [None] * self.world  # every trainer's, by rank
        if self.world > 1:
            torch.distributed.all_gather_object(rng, capture_rng())
        else:
            rng[0] = capture_rng()
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
            ray.train.report({"step": step}, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_name(step))
        if self.rank == 0:
            log.info("step %d: checkpoint %s", step, join(self.job.output, CHECKPOINTS, checkpoint_name(step)))


def start_state(job: TrainJob) -> tuple[dict[str, torch.Tensor], dict, bool] | None:
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


def restore(state: dict, scaler, rank: int, world: int, workers: int, batch_size: int,
            run: str) -> tuple[int, list[dict]]:
    """Restore this run's grad scaler and RNG; its data position and metrics history."""
    scaler.load_state_dict(state["scaler"])
    data = state["data"]
    if (data["world"], data["workers"], data["batch_size"]) != (world, workers, batch_size):
        log.warning("resuming with %d trainers × %d loader workers × batch %d (was %d × %d × %d): the data order "
                    "from here on differs from the uninterrupted run's", world, workers, batch_size,
                    data["world"], data["workers"], data["batch_size"])
    if len(state["rng"]) == world:
        restore_rng(state["rng"][rank])
    history = state["metrics"] if "metrics" in state else read_metrics(run)  # checkpoints before they held them
    return data["batches"], history


def finish(job: TrainJob, model: EclipsePrior, step: int, same_run: bool, records: Records) -> None:
    """The run's end, on rank 0: the last model in final/, then summary.json (last: a run with one is complete)."""
    _save_final(model, join(job.output, FINAL), training_record(job))
    own = join(job.output, CHECKPOINTS, checkpoint_name(step))
    write_json_atomic(join(job.output, SUMMARY), {
        "step": step,
        "final": str(join(job.output, FINAL)),
        "checkpoint": str(own if is_file(join(own, STATE)) else checkpoints(job.output)[-1]),
        "profile": job.profile,
        "started_from": job.start_from if not same_run else None,
        **training_record(job),
        "provenance": job.provenance,
        "train": records.last.get("train"),
        "val": records.last.get("val"),
    })


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
