"""generate and interpolate flows. The models load once per run, in a Ray actor that asks for a GPU
(lambda_eclipse/actor_pool; `runtime.gpus`), so on a cluster they run on a GPU node; this process plans, dispatches one
Prefect task per prompt (its images, rendered by the actor and written here) or one for the whole interpolation grid.
Each run publishes an image artifact (the image, contact sheet or grid) and a markdown artifact (what was generated,
with seeds and files); the files stay in the output directory.
"""

from __future__ import annotations

import base64
from functools import partial
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_image_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic.json_schema import SkipJsonSchema

from flows.handed import Handed, config_hash, plan_of
from generate.config import GUIDANCE, INTERPOLATE_GUIDANCE, load_generate_config
from generate.interpolate import GRID, grid_images, write_grid
from generate.pipeline import Generator
from generate.plan import GeneratePlan, prepare
from generate.requests import Job, check_grid, corner_requests, requests_from_args
from generate.run import render_job, write_contact_sheet, write_job
from lambda_eclipse.actor_pool import ActorPool, model_pool
from prior.registry import resolve_prior
from storage.confine import confine


def models(plan: GeneratePlan) -> partial:
    """What a model actor builds: the plan's Generator."""
    return partial(Generator, plan.profile, plan.cfg, plan.prior, plan.segment, plan.decoder)


@task(name="generate-prompt", cache_policy=NO_CACHE)
def generate_prompt(pool: ActorPool, job: Job, plan: GeneratePlan) -> list[str]:
    images, metadata = pool.call(render_job, job, plan.settings, doing=f"generating prompt {job.index}")
    return [str(p) for p in write_job(job, images, metadata, plan.output)]


def publish_image(path: Path, key: str, description: str) -> None:
    create_image_artifact(
        image_url="data:image/png;base64," + base64.b64encode(path.read_bytes()).decode(), key=key,
        description=description,
    )


def _decoder(plan: GeneratePlan) -> str:
    d = plan.decoder
    return f"fine-tuned decoder UNet {d.unet} (sha256 {d.sha256[:12]}…)" if d else "base decoder"


def _report(plan: GeneratePlan) -> None:
    logger = get_run_logger()
    for warning in plan.warnings:
        logger.warning(warning)
    logger.info("%d prompt(s), %d image(s), %s profile, prior %s (sha256 %s…), %s, %d DDIM steps, guidance %g, "
                "%d×%d px", len(plan.jobs), sum(j.num_images for j in plan.jobs), plan.profile, plan.prior.path,
                plan.prior.sha256[:12], _decoder(plan), plan.settings.steps, plan.settings.guidance,
                plan.settings.width, plan.settings.height)


@flow(name="generate")
def generate(
    prior: str | None,
    output: str,
    prompt: str | None = None,
    subjects: list[str] | None = None,
    canny: str | None = None,
    batch: str | None = None,
    profile: str | None = None,
    num_images: int = 1,
    seed: int = 0,
    steps: int = 50,
    guidance: float = GUIDANCE,
    height: int | None = None,
    width: int | None = None,
    segment: bool = False,
    config_file: str | None = None,
    overrides: list[str] | None = None,
    decoder: str | None = None,
    handed: SkipJsonSchema[Handed | None] = None,
) -> dict:
    """Generate images of `prompt` with `subjects` ("WORD=IMAGE[:MASK]"), or of every line of the `batch` JSONL file.

    `profile` None: the prior checkpoint's own. `decoder`: a fine-tuned decoder directory (finetune-decoder's).
    `prior` None: the prior registry's current prior. `handed`: the plan `lambda-eclipse generate` prepared from these
    parameters (flows/handed.py); without it the flow prepares its own."""
    prior = resolve_prior(prior)
    confine(prior=prior, output=output, canny=canny, batch=batch, config_file=config_file, decoder=decoder)
    plan: GeneratePlan = plan_of(handed, lambda: prepare(
        requests_from_args(prompt, subjects, canny, batch, seed, num_images), prior, output, profile,
        load_generate_config(config_file, overrides or []), steps, guidance, height, width, segment, decoder=decoder))
    return run_generate(plan)


def hand(plan: GeneratePlan) -> Handed:
    """The CLI's plan for the generate or interpolate flow, and what its run records of it."""
    return Handed(plan=plan, summary={"config_hash": config_hash(plan.cfg), "profile": str(plan.profile),
                                      "output": str(plan.output), "jobs": len(plan.jobs),
                                      "images": sum(j.num_images for j in plan.jobs),
                                      "prior_sha256": plan.prior.sha256[:16],
                                      "decoder_sha256": plan.decoder.sha256[:16] if plan.decoder else None})


def run_generate(plan: GeneratePlan) -> dict:
    """Generate `plan`'s images, in a generate flow run (it logs to the run and publishes its artifacts)."""
    _report(plan)
    with model_pool("generate", models(plan), plan.cfg.runtime, 1, get_run_logger()) as pool:
        paths = [[Path(p) for p in generate_prompt(pool, job, plan)] for job in plan.jobs]
    sheet = write_contact_sheet(plan.jobs, paths, plan.output)
    shown = sheet or paths[0][0]
    publish_image(shown, "generate-images", f"{'contact sheet' if sheet else 'image'} of {plan.output}")
    lines = ["# generate", "", f"prior `{plan.prior.path}` (sha256 `{plan.prior.sha256[:16]}…`), {_decoder(plan)}, "
             f"{plan.profile} profile, {plan.settings.steps} DDIM steps, guidance {plan.settings.guidance}", "",
             "| prompt | subjects | seed | file |", "|---|---|---:|---|"]
    lines += [f"| {job.prompt} | {', '.join(s.spec.word for s in job.subjects) or '—'} | {seed} | `{path}` |"
              for job, job_paths in zip(plan.jobs, paths) for seed, path in zip(job.seeds, job_paths)]
    lines += [""] + [f"Warning: {w}" for w in plan.warnings]
    create_markdown_artifact(markdown="\n".join(lines), key="generate-summary", description="generated images")
    return {"output": str(plan.output), "images": [str(p) for job_paths in paths for p in job_paths],
            "contact_sheet": str(sheet) if sheet else None, "warnings": plan.warnings, "profile": plan.profile}


@task(name="render-grid", cache_policy=NO_CACHE)
def grid_task(pool: ActorPool, plan: GeneratePlan, steps: int, seed: int) -> dict:
    images, cells, metadata = pool.call(grid_images, plan.jobs, steps, seed, plan.settings,
                                        doing="rendering the interpolation grid")
    return write_grid(images, cells, metadata, plan.output)


@flow(name="interpolate")
def interpolate(
    prior: str | None,
    output: str,
    prompts: list[str],
    corners: list[str],
    steps: int = 4,
    seed: int = 0,
    profile: str | None = None,
    inference_steps: int = 50,
    guidance: float = INTERPOLATE_GUIDANCE,
    height: int | None = None,
    width: int | None = None,
    segment: bool = False,
    config_file: str | None = None,
    overrides: list[str] | None = None,
    decoder: str | None = None,
    handed: SkipJsonSchema[Handed | None] = None,
) -> dict:
    """A grid between 2 or 4 corner concept sets (each "WORD=IMAGE[:MASK],…"), `steps` cells per side; `prior` None:
    the prior registry's current prior. `handed`: the plan `lambda-eclipse interpolate` prepared from these
    parameters (flows/handed.py); without it the flow prepares its own."""
    prior = resolve_prior(prior)
    confine(prior=prior, output=output, config_file=config_file, decoder=decoder)
    check_grid(len(corners), steps)
    plan: GeneratePlan = plan_of(handed, lambda: prepare(
        corner_requests(prompts, corners, seed), prior, output, profile,
        load_generate_config(config_file, overrides or []), inference_steps, guidance, height, width, segment,
        decoder=decoder))
    return run_interpolate(plan, steps, seed)


def run_interpolate(plan: GeneratePlan, steps: int, seed: int) -> dict:
    """Render `plan`'s grid, `steps` cells per side, all at `seed`, in an interpolate flow run (it logs to the run and
    publishes its artifacts)."""
    _report(plan)
    with model_pool("interpolate", models(plan), plan.cfg.runtime, 1, get_run_logger()) as pool:
        metadata = grid_task(pool, plan, steps, seed)
    path = plan.output / GRID
    publish_image(path, "interpolate-grid", f"{metadata['rows']}×{metadata['columns']} interpolation, seed {seed}")
    corners_md = [f"{i + 1}. {job.prompt} — "
                  + (", ".join(f"{s.spec.word}={s.spec.image}" for s in job.subjects) or "—")
                  for i, job in enumerate(plan.jobs)]
    create_markdown_artifact(
        markdown="\n".join(["# interpolate", "", f"`{path}`: {metadata['rows']} × {metadata['columns']} cells, "
                            f"seed {seed}, {_decoder(plan)}; corners (top-left, top-right, bottom-left, "
                            "bottom-right):", ""] + corners_md),
        key="interpolate-summary", description="interpolation grid",
    )
    return {"output": str(plan.output), "grid": str(path), "rows": metadata["rows"], "columns": metadata["columns"],
            "warnings": plan.warnings}
