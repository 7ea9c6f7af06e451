"""Multi-concept interpolation (paper §4, Fig. 7): the prior's embeddings of 2 or 4 corner concept sets, mixed
bilinearly and rendered with one fixed seed into a single grid PNG.

Corners are ordered top-left, top-right (2 corners: the two ends of one row), bottom-left, bottom-right. Cell (r, c) of
a steps × steps grid has u = c / (steps − 1) across and v = r / (steps − 1) down, and embedding
(1−u)(1−v)·A + u(1−v)·B + (1−u)v·C + uv·D; the corner cells are the corners' embeddings exactly.
Every corner is predicted with the same seed (the prior's noise ε) and every cell rendered with the same seed (the
decoder's latents), so what changes across the grid is the embedding alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from generate.outputs import grid, job_metadata
from generate.pipeline import Generator
from generate.requests import Job, RenderSettings, check_grid

GRID, METADATA, EMBEDDINGS = "interpolation.png", "interpolation.json", "embeddings.npy"


def bilinear_weights(corners: int, steps: int) -> np.ndarray:
    """(rows, columns, corners) mixing weights; rows is 1 for 2 corners, else steps."""
    check_grid(corners, steps)
    t = np.linspace(0.0, 1.0, steps)
    if corners == 2:
        return np.stack([1 - t, t], axis=-1)[None]
    v, u = np.meshgrid(t, t, indexing="ij")
    return np.stack([(1 - u) * (1 - v), u * (1 - v), (1 - u) * v, u * v], axis=-1)


def interpolate(corner_embeddings: torch.Tensor, weights: np.ndarray) -> torch.Tensor:
    """(rows, columns, d): each cell's weighted sum of the (corners, d) embeddings."""
    w = torch.from_numpy(weights).to(corner_embeddings)
    return torch.einsum("rck,kd->rcd", w, corner_embeddings)


def grid_images(generator: Generator, corners: list[Job], steps: int, seed: int,
                settings: RenderSettings) -> tuple[list[np.ndarray], np.ndarray, dict]:
    """The cells' images, their (rows, columns, d) embeddings and the grid's metadata (in a model actor)."""
    weights = bilinear_weights(len(corners), steps)
    embeddings = torch.cat([generator.predict(job, [seed]) for job in corners])
    cells = interpolate(embeddings, weights)
    rows, columns = weights.shape[:2]
    images = generator.render(cells.reshape(rows * columns, -1), [seed] * (rows * columns), settings)
    metadata = {
        "seed": seed, "rows": rows, "columns": columns, "weights": weights.round(6).tolist(),
        "corners": [job_metadata(job, settings, generator) for job in corners],
        "settings": asdict(settings), "grid": GRID, "embeddings": EMBEDDINGS,
    }
    return images, cells.cpu().numpy(), metadata


def write_grid(images: list[np.ndarray], cells: np.ndarray, metadata: dict, output: Path) -> dict:
    """Write the grid PNG, the cells' embeddings (.npy) and the metadata (in the flow process); the metadata."""
    grid(images, metadata["columns"]).save(output / GRID)
    np.save(output / EMBEDDINGS, cells)
    (output / METADATA).write_text(json.dumps(metadata, indent=2) + "\n")
    return metadata


def render_grid(generator: Generator, corners: list[Job], steps: int, seed: int, settings: RenderSettings,
                output: Path) -> dict:
    """Both in one process (tests)."""
    return write_grid(*grid_images(generator, corners, steps, seed, settings), output)
