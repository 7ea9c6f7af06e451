"""Photo-like test images: a gradient background with overlapping coloured shapes and sensor noise.

The tests, the benchmarks and the README's quickstart use them (no image may be downloaded here).
`python -m lambda_eclipse.synthetic DIR [--count N] [--size S]` writes N JPEGs into DIR.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def photo(seed: int, width: int = 1024, height: int = 1024) -> Image.Image:
    rng = np.random.default_rng(seed)
    top, bottom = rng.integers(20, 200, 3), rng.integers(20, 200, 3)
    ramp = np.linspace(0, 1, height)[:, None, None]
    background = (top * (1 - ramp) + bottom * ramp).repeat(width, axis=1)
    image = Image.fromarray(background.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(2, 6)):
        w, h = rng.uniform(0.2, 0.6) * width, rng.uniform(0.2, 0.6) * height
        x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
        colour = tuple(int(c) for c in rng.integers(0, 220, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x, y, x + w, y + h], fill=colour)
    noisy = np.asarray(image, np.int16) + rng.normal(0, 6, (height, width, 3)).astype(np.int16)
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def write_photos(directory: str | Path, count: int, size: int = 1024, start: int = 0) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        path = directory / f"photo_{i:05d}.jpg"
        photo(i, size, size).save(path, quality=90)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    args.add_argument("directory")
    args.add_argument("--count", type=int, default=24)
    args.add_argument("--size", type=int, default=1024)
    ns = args.parse_args(argv)
    paths = write_photos(ns.directory, ns.count, ns.size)
    print(f"wrote {len(paths)} {ns.size}x{ns.size} photos to {ns.directory}")


if __name__ == "__main__":
    main()
