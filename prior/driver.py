"""Training of the λ-ECLIPSE prior on a built dataset (paper §3, Appendix C), as a Ray Train run.

`prepare_training` (prior/prepare.py) checks everything a run depends on and fails with a UserError before any work
starts; `run_training` runs `train_loop` (prior/loop.py) on Ray Train (`TorchTrainer`: one worker per data-parallel
trainer, DistributedDataParallel when there are several, on the cluster's GPUs when it has any). Checkpoints go
through `ray.train.report` to the run directory (prior/job.py's RUN_DIR), a local path or an fsspec URL (`s3://…`),
never to a worker's own disk: a training worker that dies is restarted by Ray
(`FailureConfig(max_failures=runtime.max_failures)`) and the run resumes from its last checkpoint, on any node, with
the same result as an uninterrupted run.

The trainers' lines (progress, checkpoints, resumption) are logged by the modules of this package and relayed to the
driver's loggers of the same names: `LOGGER`, their parent, is the one logger to follow.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from lambda_eclipse.errors import UserError, WorkerError, ray_error_reason
from prior.config import capped_batch, share
from prior.job import SUMMARY, TrainJob
from prior.loop import train_loop
from storage.fs import arrow, join
from storage.layout import read_json
from storage.run_dir import CHECKPOINTS

LOGGER = "prior"  # every training module's logger is a child of it

log = logging.getLogger(__name__)


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
        trainers = r.trainers or (gpus if device == "cuda" else 1)
        shards = len(job.data.splits["train"].shards)
        if shards < trainers:
            raise UserError(f"dataset {job.data.root} has {shards} shards with training samples; {trainers} "
                            "data-parallel trainers need at least one each (set runtime.trainers)")
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
                                                 resources_per_worker={"CPU": r.cpus_per_trainer}),
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
        with config["logs"].forwarding(label, LOGGER):  # progress and checkpoints in the flow's run log
            train_loop(config["job"])
    except UserError as exc:  # raised by every trainer alike (its cause is all-reduced); Ray would retry errors
        return str(exc)
    return None
