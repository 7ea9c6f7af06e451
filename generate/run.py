"""Checked jobs → images: rendered where the models are (`render_job`, in a model actor), written where the outputs
are (`write_job`, in the flow process)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from generate.outputs import contact_sheet, job_metadata, slug, write_image
from generate.pipeline import Generator
from generate.requests import Job, RenderSettings

CONTACT_SHEET = "contact_sheet.png"


def image_paths(job: Job, output: Path) -> list[Path]:
    """OUTPUT/<job index>-<prompt slug>-<image index>.png, each with a .json beside it."""
    return [output / f"{job.index:04d}-{slug(job.prompt)}-{k}.png" for k in range(job.num_images)]


def render_job(generator: Generator, job: Job, settings: RenderSettings) -> tuple[list[np.ndarray], dict]:
    """The job's images and the metadata they share."""
    images = generator.generate(job, settings)
    return images, job_metadata(job, settings, generator)


def write_job(job: Job, images: list[np.ndarray], metadata: dict, output: Path) -> list[Path]:
    return [
        write_image(path, image, metadata | {"job_index": job.index, "image_index": k, "seed": seed})
        for k, (path, image, seed) in enumerate(zip(image_paths(job, output), images, job.seeds))
    ]


def generate_job(generator: Generator, job: Job, settings: RenderSettings, output: Path) -> list[Path]:
    """Render and write in one process (tests, benchmarks)."""
    return write_job(job, *render_job(generator, job, settings), output)


def write_contact_sheet(jobs: list[Job], paths: list[list[Path]], output: Path) -> Path | None:
    """A contact sheet of every image when there is more than one."""
    flat = [(path, f"{job.prompt} (seed {seed})") for job, job_paths in zip(jobs, paths)
            for path, seed in zip(job_paths, job.seeds)]
    if len(flat) < 2:
        return None
    return contact_sheet([p for p, _ in flat], [c for _, c in flat], output / CONTACT_SHEET)
