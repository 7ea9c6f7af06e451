"""generate and interpolate flows: the models load once per run; one Prefect task per prompt (its images), or one
for the whole interpolation grid. Each run publishes an image artifact (the image, contact sheet or grid) and a
markdown artifact (what was generated, with seeds and files); the files stay in the output directory.
"""

from __future__ import annotations

import base64
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_image_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from generate.config import load_generate_config
from generate.interpolate import GRID, check_grid, render_grid
from generate.pipeline import Generator
from generate.plan import GeneratePlan, prepare
from generate.requests import Job, corner_requests, requests_from_args
from generate.run import generate_job, write_contact_sheet
from prior.registry import resolve_prior
from storage.confine import confine


@task(name="load-models", cache_policy=NO_CACHE)
def load_models(plan: GeneratePlan) -> Generator:
    return Generator(plan.profile, plan.cfg, plan.prior, plan.segment)


@task(name="generate-prompt", cache_policy=NO_CACHE)
def generate_prompt(generator: Generator, job: Job, plan: GeneratePlan) -> list[str]:
    return [str(p) for p in generate_job(generator, job, plan.settings, plan.output)]


def publish_image(path: Path, key: str, description: str) -> None:
    create_image_artifact(
        image_url="data:image/png;base64," + base64.b64encode(path.read_bytes()).decode(), key=key,
        description=description,
    )


def _report(plan: GeneratePlan) -> None:
    logger = get_run_logger()
    for warning in plan.warnings:
        logger.warning(warning)
    logger.info("%d prompt(s), %d image(s), %s profile, prior %s (sha256 %s…), %d DDIM steps, guidance %g, %d×%d px",
                len(plan.jobs), sum(j.num_images for j in plan.jobs), plan.profile, plan.prior.path,
                plan.prior.sha256[:12], plan.settings.steps, plan.settings.guidance, plan.settings.width,
                plan.settings.height)


@flow(name="generate")
def generate(
    prior: str | None,
    output: str,
    prompt: str | None = None,
    subjects: list[str] | None = None,
    canny: str | None = None,
    batch: str | None = None,
    profile: str = "tiny",
    num_images: int = 1,
    seed: int = 0,
    steps: int = 50,
    guidance: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    segment: bool = False,
    config_file: str | None = None,
    overrides: list[str] | None = None,
) -> dict:
    """Generate images of `prompt` with `subjects` ("WORD=IMAGE[:MASK]"), or of every line of the `batch` JSONL file.
    `prior` None: the prior registry's current prior."""
    prior = resolve_prior(prior)
    confine(prior=prior, output=output, canny=canny, batch=batch, config_file=config_file)
    cfg = load_generate_config(config_file, overrides or [])
    requests = requests_from_args(prompt, subjects, canny, batch, seed, num_images)
    plan = prepare(requests, prior, output, profile, cfg, steps, guidance, height, width, segment)
    _report(plan)
    generator = load_models(plan)
    paths = [[Path(p) for p in generate_prompt(generator, job, plan)] for job in plan.jobs]
    sheet = write_contact_sheet(plan.jobs, paths, plan.output)
    shown = sheet or paths[0][0]
    publish_image(shown, "generate-images", f"{'contact sheet' if sheet else 'image'} of {plan.output}")
    lines = ["# generate", "", f"prior `{plan.prior.path}` (sha256 `{plan.prior.sha256[:16]}…`), {plan.profile} "
             f"profile, {plan.settings.steps} DDIM steps, guidance {plan.settings.guidance}", "",
             "| prompt | subjects | seed | file |", "|---|---|---:|---|"]
    lines += [f"| {job.prompt} | {', '.join(s.spec.word for s in job.subjects) or '—'} | {seed} | `{path}` |"
              for job, job_paths in zip(plan.jobs, paths) for seed, path in zip(job.seeds, job_paths)]
    lines += [""] + [f"Warning: {w}" for w in plan.warnings]
    create_markdown_artifact(markdown="\n".join(lines), key="generate-summary", description="generated images")
    return {"output": str(plan.output), "images": [str(p) for job_paths in paths for p in job_paths],
            "contact_sheet": str(sheet) if sheet else None, "warnings": plan.warnings}


@task(name="render-grid", cache_policy=NO_CACHE)
def grid_task(generator: Generator, plan: GeneratePlan, steps: int, seed: int) -> dict:
    return render_grid(generator, plan.jobs, steps, seed, plan.settings, plan.output)


@flow(name="interpolate")
def interpolate(
    prior: str | None,
    output: str,
    prompts: list[str],
    corners: list[str],
    steps: int = 4,
    seed: int = 0,
    profile: str = "tiny",
    inference_steps: int = 50,
    guidance: float = 7.5,
    height: int | None = None,
    width: int | None = None,
    segment: bool = False,
    config_file: str | None = None,
    overrides: list[str] | None = None,
) -> dict:
    """A grid between 2 or 4 corner concept sets (each "WORD=IMAGE[:MASK],…"), `steps` cells per side; `prior` None:
    the prior registry's current prior."""
    prior = resolve_prior(prior)
    confine(prior=prior, output=output, config_file=config_file)
    check_grid(len(corners), steps)
    cfg = load_generate_config(config_file, overrides or [])
    requests = corner_requests(prompts, corners, seed)
    plan = prepare(requests, prior, output, profile, cfg, inference_steps, guidance, height, width, segment)
    _report(plan)
    metadata = grid_task(load_models(plan), plan, steps, seed)
    path = plan.output / GRID
    publish_image(path, "interpolate-grid", f"{metadata['rows']}×{metadata['columns']} interpolation, seed {seed}")
    corners_md = [f"{i + 1}. {job.prompt} — "
                  + (", ".join(f"{s.spec.word}={s.spec.image}" for s in job.subjects) or "—")
                  for i, job in enumerate(plan.jobs)]
    create_markdown_artifact(
        markdown="\n".join(["# interpolate", "", f"`{path}`: {metadata['rows']} × {metadata['columns']} cells, seed "
                            f"{seed}; corners (top-left, top-right, bottom-left, bottom-right):", ""] + corners_md),
        key="interpolate-summary", description="interpolation grid",
    )
    return {"output": str(plan.output), "grid": str(path), "rows": metadata["rows"], "columns": metadata["columns"],
            "warnings": plan.warnings}
