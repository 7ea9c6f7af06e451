"""Run checked jobs on a loaded `Generator` and write their images, metadata and contact sheet."""

from __future__ import annotations

from pathlib import Path

from generate.outputs import contact_sheet, job_metadata, slug, write_image
from generate.pipeline import Generator
from generate.requests import Job, RenderSettings

CONTACT_SHEET = "contact_sheet.png"


def image_paths(job: Job, output: Path) -> list[Path]:
    """OUTPUT/<job index>-<prompt slug>-<image index>.png, each with a .json beside it."""
    return [output / f"{job.index:04d}-{slug(job.prompt)}-{k}.png" for k in range(job.num_images)]


def generate_job(generator: Generator, job: Job, settings: RenderSettings, output: Path) -> list[Path]:
    metadata = job_metadata(job, settings, generator)
    images = generator.generate(job, settings)
    return [
        write_image(path, image, metadata | {"job_index": job.index, "image_index": k, "seed": seed})
        for k, (path, image, seed) in enumerate(zip(image_paths(job, output), images, job.seeds))
    ]


def write_contact_sheet(jobs: list[Job], paths: list[list[Path]], output: Path) -> Path | None:
    """A contact sheet of every image when there is more than one."""
    flat = [(path, f"{job.prompt} (seed {seed})") for job, job_paths in zip(jobs, paths)
            for path, seed in zip(job_paths, job.seeds)]
    if len(flat) < 2:
        return None
    return contact_sheet([p for p, _ in flat], [c for _, c in flat], output / CONTACT_SHEET)
