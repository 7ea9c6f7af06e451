"""What a generation leaves on disk: PNG + metadata JSON per image, and contact sheets / grids of many images."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from generate.requests import Job, RenderSettings
from lambda_eclipse.errors import UserError

if TYPE_CHECKING:  # the pipeline imports diffusers: not needed to check an output directory
    from generate.pipeline import Generator

CAPTION_HEIGHT = 30


def check_output(output: str | Path) -> Path:
    output = Path(output)
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"output directory {output} is not writable ({exc.strerror}); "
                        "choose another --output") from None
    return output


def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].rstrip("-") or "prompt"


def job_metadata(job: Job, settings: RenderSettings, generator: Generator) -> dict:
    """Everything needed to reproduce a job's images (each image adds its seed)."""
    return {
        "prompt": job.prompt,
        "subjects": [
            {"word": s.spec.word, "image": s.spec.image, "mask": s.spec.mask, "span": list(s.span),
             "token_positions": s.token_positions, "embedded": generator.subject(s.spec).how}
            for s in job.subjects
        ],
        "control": {"canny": job.canny, "edge_map": generator.checkpoint.canny()} if job.canny else "zero image",
        "truncated": job.truncated,
        "steps": settings.steps, "guidance": settings.guidance, "height": settings.height, "width": settings.width,
        "scheduler": "DDIM", "profile": generator.profile, "dtype": str(generator.dtype).removeprefix("torch."),
        "models": generator.model_ids(),
        "prior_sha256": generator.checkpoint.sha256,
        "decoder": generator.fine_tuned.describe() if generator.fine_tuned else "base",
    }


def write_image(path: Path, image: np.ndarray, metadata: dict) -> Path:
    """`path` (.png) and its metadata next to it (.json)."""
    Image.fromarray(image).save(path)
    path.with_suffix(".json").write_text(json.dumps(metadata, indent=2) + "\n")
    return path


def grid(images: list[np.ndarray], columns: int) -> Image.Image:
    """Images of one size side by side, `columns` per row, no gaps (the interpolation grid)."""
    h, w = images[0].shape[:2]
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * w, rows * h), "white")
    for i, image in enumerate(images):
        sheet.paste(Image.fromarray(image), ((i % columns) * w, (i // columns) * h))
    return sheet


def contact_sheet(paths: list[Path], captions: list[str], path: Path, size: int = 192, columns: int = 4) -> Path:
    """Thumbnails of the images with a caption under each, in one PNG."""
    columns = min(columns, len(paths))
    rows = -(-len(paths) // columns)
    sheet = Image.new("RGB", (columns * size, rows * (size + CAPTION_HEIGHT)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image_path, caption) in enumerate(zip(paths, captions)):
        x, y = (i % columns) * size, (i // columns) * (size + CAPTION_HEIGHT)
        with Image.open(image_path) as image:
            sheet.paste(image.convert("RGB").resize((size, size)), (x, y))
        draw.text((x + 2, y + size + 2), caption[:30], fill="black")
        draw.text((x + 2, y + size + 15), caption[30:60], fill="black")
    sheet.save(path)
    return path
