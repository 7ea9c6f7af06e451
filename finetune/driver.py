"""finetune-decoder's training as a Ray task (`run_finetune`): on a GPU node when the run's device is cuda, never in
the flow process; run again by Ray when it dies, resuming from the run's last checkpoint.

The task's lines (progress, checkpoints, resumption) are logged by the modules of this package and relayed to the
driver's loggers of the same names: `LOGGER`, their parent, is the one logger to follow.
"""

from __future__ import annotations

import math
from dataclasses import replace

from finetune.job import FinetuneJob
from finetune.loop import finetune
from lambda_eclipse.errors import UserError, WorkerError, ray_error_reason
from storage.run_dir import checkpoints

LOGGER = "finetune"  # every training module's logger is a child of it


def run_finetune(job: FinetuneJob) -> dict:
    """Run `finetune` as a Ray task (a Ray session open; `job` placed): on a GPU node when its device is cuda, never in
    the flow process. A task that dies (a killed worker, a lost node) is run again by Ray, up to
    runtime.max_failures times, and resumes from the run's last checkpoint. Returns finetune.json's record."""
    import ray
    from ray.exceptions import RayError

    from lambda_eclipse.ray_logs import relayed_logs

    r = job.cfg.runtime
    task = ray.remote(num_cpus=r.cpus_per_trainer, num_gpus=1 if job.device == "cuda" else 0,
                      max_retries=r.max_failures, retry_exceptions=False)(_finetune_task)
    with relayed_logs() as logs:
        try:
            return ray.get(task.remote(job, logs))
        except RayError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, UserError):  # a bad setting or a diverged loss: in one line, as if run here
                raise cause from None
            raise WorkerError(f"finetune-decoder's training task failed: {ray_error_reason(exc)}; {job.output} keeps "
                              "its checkpoints: continue it with --resume") from exc


def _finetune_task(job: FinetuneJob, logs) -> dict:
    import torch

    torch.set_num_threads(max(1, math.floor(job.cfg.runtime.cpus_per_trainer)))
    existing = checkpoints(job.output)
    if existing and str(existing[-1]) != job.resume_from:  # a retried task: its own run's checkpoints
        job = replace(job, resume_from=str(existing[-1]))
    with logs.forwarding("finetune", LOGGER):
        return finetune(job)[1]
