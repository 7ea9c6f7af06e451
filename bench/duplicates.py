"""The duplicates pass (tasks/copies.py) on the fixed 64-photo set of bench/build_dataset.py plus copies made from it:
recall per kind of copy and precision against distinct photos and reframings of the same scene, at several
`duplicates.max_distance`; the pass's CPU per photo at the photos' sizes; model calls saved.

    python bench/duplicates.py [--distances 2,3,4,6,8]

Copies: resized to 50, 70 and 90 %; re-compressed at quality 60, 75 and 90; resized to 70 % and re-compressed at 75;
a 5 % crop (2.5 % off each side); a horizontal flip. "Same scene, other framing": a 60 % crop at another place of the
photo (a different photo of the same subject, which must not be taken for a copy).
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from build_dataset import fixed_photo_set
from PIL import Image, ImageOps

from tasks.copies import group_copies
from tasks.decode import content_hash, small_photo
from tasks.phash import phash
from tasks.pipeline import STAGES


def _jpeg(image: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _resized(image: np.ndarray, f: float) -> np.ndarray:
    return cv2.resize(image, (round(image.shape[1] * f), round(image.shape[0] * f)), interpolation=cv2.INTER_AREA)


def _crop(image: np.ndarray, keep: float, at: float) -> np.ndarray:
    h, w = image.shape[:2]
    ch, cw = round(h * keep), round(w * keep)
    y, x = round((h - ch) * at), round((w - cw) * at)
    return np.ascontiguousarray(image[y:y + ch, x:x + cw])


COPIES = {
    "resized 50 %": lambda a: _jpeg(_resized(a, 0.5), 90),
    "resized 70 %": lambda a: _jpeg(_resized(a, 0.7), 90),
    "resized 90 %": lambda a: _jpeg(_resized(a, 0.9), 90),
    "quality 60": lambda a: _jpeg(a, 60),
    "quality 75": lambda a: _jpeg(a, 75),
    "quality 90": lambda a: _jpeg(a, 90),
    "resized 70 % + quality 75": lambda a: _jpeg(_resized(a, 0.7), 75),
    "5 % crop": lambda a: _jpeg(_crop(a, 0.95, 0.5), 90),
    "flipped": lambda a: _jpeg(np.ascontiguousarray(a[:, ::-1]), 90),
}
REFRAMED = "same scene, other framing"


def _hash(data: bytes) -> tuple[str, int, int, float]:
    start = time.process_time()
    small, width, height = small_photo(data, 10**9)
    return content_hash(data), phash(small), width * height, time.process_time() - start


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args.add_argument("--distances", default="2,3,4,6,8", help="max_distance values to report")
    ns = args.parse_args()
    distances = [int(x) for x in ns.distances.split(",")]
    paths = fixed_photo_set(Path(tempfile.mkdtemp(prefix="bench-duplicates-")))
    rows = []  # (key, kind, original index, content, phash, pixels)
    seconds: dict[str, list[float]] = {"1024–1536 px": [], "1536–2048 px": []}
    for i, path in enumerate(paths):
        data = path.read_bytes()
        content, h, pixels, spent = _hash(data)
        seconds["1024–1536 px" if max(Image.open(path).size) < 1536 else "1536–2048 px"].append(spent)
        rows.append((f"{i:03d}", "original", i, content, h, pixels))
        image = np.array(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))  # as displayed
        for kind, make in COPIES.items():
            rows.append((f"{i:03d}~{kind}", kind, i, *_hash(make(image))[:3]))
        rows.append((f"{i:03d}~{REFRAMED}", REFRAMED, i, *_hash(_jpeg(_crop(image, 0.6, 0.1), 90))[:3]))
    keys = np.array([r[0] for r in rows], object)
    hashes = np.array([r[4] for r in rows], np.uint64)
    contents = np.array([r[3] for r in rows], object)
    pixels = np.array([r[5] for r in rows], np.int64)
    print(f"{len(paths)} photos of the fixed set, {len(COPIES)} kinds of copy each, and a reframing of each; "
          "the pass's CPU per photo (read from memory, sha256, DCT-domain decode, pHash): " + ", ".join(
              f"{label} {1000 * np.mean(v):.1f} ms ({len(v)} photos)" for label, v in seconds.items() if v))
    kinds = ["original", *COPIES, REFRAMED]
    print(f"\nrecall per kind of copy (grouped with its original), and inputs wrongly grouped (another photo's, or a "
          f"reframing taken for a copy)\n{'max_distance':>12} | " + " | ".join(f"{k[:14]:>14}" for k in kinds[1:-1])
          + " | false copies")
    for t in distances:
        table = group_copies(keys, np.zeros(len(rows), np.int64), hashes, contents, pixels,
                             np.zeros(len(rows), bool), t)
        marked = dict(zip(table["key"].to_pylist(), table["copy_of"].to_pylist(), strict=True))
        group = {key: marked.get(key, key) for key in keys}  # each input's group: the key kept in it
        members: dict[str, set[int]] = {}
        for key, _, original, *_ in rows:
            members.setdefault(group[key], set()).add(original)
        found = dict.fromkeys(kinds, 0)
        false = 0  # inputs grouped with another photo's, or a reframing taken for a copy
        for key, kind, original, *_ in rows:
            if kind in COPIES:
                found[kind] += group[key] == group[f"{original:03d}"]
            together = len(members[group[key]]) > 1 or (kind == REFRAMED and group[key] == group[f"{original:03d}"])
            false += together
        print(f"{t:>12} | " + " | ".join(f"{found[k] / len(paths):>14.0%}" for k in kinds[1:-1]) + f" | {false}")
    t = 4
    table = group_copies(keys, np.zeros(len(rows), np.int64), hashes, contents, pixels, np.zeros(len(rows), bool), t)
    tflops = sum(s.tflops for s in STAGES)
    print(f"\nat max_distance {t}: {table.num_rows} of {len(rows)} inputs rejected as copies before any model: "
          f"{table.num_rows} calls of each model stage saved, {table.num_rows * tflops:.0f} TFLOP at the paper's "
          f"sizes ({tflops:g} TFLOP per sample, every model stage)")


if __name__ == "__main__":
    main()
