"""finetune-decoder flow: one Prefect task runs the fine-tuning (finetune/driver.py) in a Ray task, on a GPU node when
the cluster has GPUs, and relays its progress to the run log; the flow publishes what was trained (subjects, how each
photo was embedded, loss, speed) as a markdown artifact and emits `EVENT`."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from pydantic.json_schema import SkipJsonSchema

from finetune.config import load_finetune_config
from finetune.driver import LOGGER, run_finetune
from finetune.job import FinetuneJob
from finetune.prepare import place, prepare_finetune
from finetune.subjects import parse_subject
from flows.handed import Handed, config_hash, plan_of
from flows.run_log import forwarded
from lambda_eclipse.ray_session import cluster_resources, ray_session
from storage.confine import confine

EVENT = "lambda-eclipse.decoder.finetuned"


@task(name="finetune", cache_policy=NO_CACHE)
def train(job: FinetuneJob) -> dict:
    with forwarded(LOGGER):
        return run_finetune(job)


@flow(name="finetune-decoder")
def finetune_decoder(
    subjects: list[str],
    output: str,
    profile: str = "tiny",
    config_file: str | None = None,
    overrides: list[str] | None = None,
    resume: bool = False,
    handed: SkipJsonSchema[Handed | None] = None,
) -> dict:
    """Fine-tune the Kandinsky 2.2 decoder UNet on the photos of `subjects` ("NAME=DIR"), into `output`.

    `handed`: the job `lambda-eclipse finetune-decoder` prepared from these parameters (flows/handed.py); without it
    the flow prepares its own."""
    confine(subjects=[parse_subject(s)[1] for s in subjects], output=output, config_file=config_file)
    job: FinetuneJob = plan_of(handed, lambda: prepare_finetune(
        subjects, output, profile, load_finetune_config(config_file, overrides or []), resume))
    return run_finetuning(job)


def hand(job: FinetuneJob) -> Handed:
    """The CLI's job for the flow, and what its run records of it."""
    return Handed(plan=job, summary={"config_hash": config_hash(job.cfg), "profile": str(job.profile),
                                     "output": job.output, "subjects": len(job.subjects),
                                     "photos": sum(len(s.photos) for s in job.subjects),
                                     "resume_from": job.resume_from})


def run_finetuning(job: FinetuneJob) -> dict:
    """Fine-tune on `job`, in a finetune-decoder flow run (it logs to the run, publishes its artifact and emits
    `EVENT`)."""
    output, profile = job.output, job.profile
    with ray_session(job.cfg.runtime.ray_cpus):
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
