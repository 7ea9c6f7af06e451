"""finetune-decoder flow: one Prefect task runs the fine-tuning (finetune/train.py) in a Ray task, on a GPU node when
the cluster has GPUs, and relays its progress to the run log; the flow publishes what was trained (subjects, how each
photo was embedded, loss, speed) as a markdown artifact and emits `EVENT`."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from finetune.config import load_finetune_config
from finetune.subjects import parse_subject
from finetune.train import FinetuneJob, place, prepare_finetune, run_finetune
from flows.prepared import prepared
from flows.run_log import forwarded
from lambda_eclipse.ray_session import cluster_resources, ray_session
from storage.confine import confine

EVENT = "lambda-eclipse.decoder.finetuned"


@task(name="finetune", cache_policy=NO_CACHE)
def train(job: FinetuneJob) -> dict:
    with forwarded(run_finetune.__module__):
        return run_finetune(job)


@flow(name="finetune-decoder")
def finetune_decoder(
    subjects: list[str],
    output: str,
    profile: str = "tiny",
    config_file: str | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
) -> dict:
    """Fine-tune the Kandinsky 2.2 decoder UNet on the photos of `subjects` ("NAME=DIR"), into `output`."""
    confine(subjects=[parse_subject(s)[1] for s in subjects], output=output, config_file=config_file)
    job = prepared("finetune-decoder", lambda: prepare_finetune(subjects, output, profile,
                                                                load_finetune_config(config_file, overrides or []),
                                                                resume))
    with ray_session(job.cfg.runtime.workers):
        job = place(job, cluster_resources().get("GPU", 0))
        get_run_logger().info("%s decoder, %d subject(s), %d px, %s on %s%s", profile, len(job.subjects),
                              job.resolution, job.precision, job.device,
                              f", resuming from {job.resume_from}" if job.resume_from else "")
        record = train(job)
    lines = [f"# finetune-decoder: {record['steps']} steps", "",
             f"base decoder `{record['base_decoder']}`, {profile} profile, {record['resolution']} px, final loss "
             f"{record['loss']:.4g}, UNet `{Path(output) / record['unet']}`", "",
             "| subject | word | photos | segmented | embedded whole |", "|---|---|---:|---:|---:|"]
    for s in record["subjects"]:
        segmented = sum(p["embedded"] == "segmented" for p in s["photos"])
        lines.append(f"| {s['name']} | {s['word']} | {len(s['photos'])} | {segmented} | "
                     f"{len(s['photos']) - segmented} |")
    create_markdown_artifact(markdown="\n".join(lines), key="finetune-decoder-summary",
                             description="fine-tuned decoder")
    emit_event(event=EVENT, resource={"prefect.resource.id": f"lambda-eclipse.decoder.{Path(output).resolve()}"},
               payload={"output": str(output), "steps": record["steps"]})
    return record | {"output": str(output)}
