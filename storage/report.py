"""What a build shows a person: the funnel table and a contact sheet of accepted samples."""

from __future__ import annotations

import base64
import io
import json
import tarfile
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageDraw

from storage.build_totals import BuildTotals
from storage.fs import Location, is_file, open_file
from storage.layout import shard_paths

COLORS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48)]


def funnel_markdown(totals: BuildTotals, contact_sheet: Location | None) -> str:
    t = totals
    lines = [
        "# build-dataset summary",
        "",
        f"{t.shards} shards, {t.inputs} inputs, **{t.accepted} accepted**, {t.inputs - t.accepted} rejected"
        + (f", {t.inputs / t.seconds:.2f} images/s" if t.seconds else ""),
        "",
        f"{t.dropped_subjects} subject(s) dropped from accepted samples (each sample's JSON says which and why: "
        "`dropped_subjects`)",
        "",
    ]
    rows = t.funnel_rows()
    if any(t.reused.values()):  # two more columns only when some stage reused outputs
        lines += ["| stage | in | rejected | out | reused | computed |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['stage']} | {r['in']} | {r['rejected']} | {r['out']} | {r.get('reused', '')} | "
                  f"{r.get('computed', '')} |" for r in rows]
    else:
        lines += ["| stage | in | rejected | out |", "|---|---:|---:|---:|"]
        lines += [f"| {r['stage']} | {r['in']} | {r['rejected']} | {r['out']} |" for r in rows]
    if contact_sheet is not None:
        lines += ["", f"Contact sheet: `{contact_sheet}`"]
    return "\n".join(lines)


def _tile(image: Image.Image, mask: np.ndarray, meta: dict, size: int) -> Image.Image:
    """One accepted sample: masks tinted, boxes drawn, caption and subject nouns written below."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    for i in range(len(meta["subjects"])):
        region = mask == i + 1
        base[region] = 0.55 * base[region] + 0.45 * np.array(COLORS[i % len(COLORS)])
    tinted = Image.fromarray(base.astype(np.uint8))
    scale = size / max(tinted.size)
    tinted = tinted.resize((max(1, round(tinted.width * scale)), max(1, round(tinted.height * scale))))
    tile = Image.new("RGB", (size, size + 44), "white")
    tile.paste(tinted, (0, 0))
    draw = ImageDraw.Draw(tile)
    for i, subject in enumerate(meta["subjects"]):
        x0, y0, x1, y1 = (v * scale for v in subject["box"])
        draw.rectangle([x0, y0, x1, y1], outline=COLORS[i % len(COLORS)], width=2)
        draw.text((x0 + 2, y0 + 1), subject["noun"], fill=COLORS[i % len(COLORS)])
    draw.text((2, size + 2), (meta["caption"] or "")[:48], fill="black")
    draw.text((2, size + 16), "nouns: " + ", ".join(meta["nouns"])[:44], fill="gray")
    draw.text((2, size + 30), "subjects: " + ", ".join(s["noun"] for s in meta["subjects"])[:40], fill="gray")
    return tile


def _samples(tar_path: Location) -> Iterator[dict[str, bytes]]:
    """A shard tar's samples one at a time (consecutive members share a key): only what is drawn is read."""
    key, parts = None, {}
    with open_file(tar_path) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for member in tar:
            name, _, ext = member.name.partition(".")
            if name != key and parts:
                yield parts
                parts = {}
            key = name
            reader = tar.extractfile(member)
            parts[ext] = reader.read() if reader is not None else b""
    if parts:
        yield parts


def thumbnail_markdown(sheet: Location | None, width: int = 640) -> str:
    """The contact sheet as an image inside the markdown artifact (a small JPEG data URI), so that the Prefect UI
    shows it in a browser on any machine; the full-size PNG stays in the dataset."""
    if sheet is None:
        return ""
    with open_file(sheet, "rb") as f:
        image = Image.open(f).convert("RGB")
    image.thumbnail((width, width * 4))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=80)
    return f"\n\n![contact sheet](data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()})\n"


def contact_sheet(
    root: Location, shards: list[int], path: Location, limit: int = 16, size: int = 256
) -> Location | None:
    """Draw up to `limit` accepted samples from the shards' tars into one PNG at `path` (a local path or a URL);
    None if there are none."""
    tiles = []
    for shard in shards:
        tar_path = shard_paths(root, shard)["tar"]
        if not is_file(tar_path):
            continue
        for parts in _samples(tar_path):
            meta = json.loads(parts["json"])
            image = Image.open(io.BytesIO(parts["jpg"]))
            mask_image = Image.open(io.BytesIO(parts["mask.png"]))
            if mask_image.size != image.size:  # masks at their own resolution (docs/shard-contract.md)
                mask_image = mask_image.resize(image.size, Image.Resampling.NEAREST)
            mask = np.asarray(mask_image)
            tiles.append(_tile(image, mask, meta, size))
            if len(tiles) >= limit:
                break
        if len(tiles) >= limit:
            break
    if not tiles:
        return None
    cols = min(4, len(tiles))
    rows = -(-len(tiles) // cols)
    sheet = Image.new("RGB", (cols * size, rows * tiles[0].height), "white")
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % cols) * size, (i // cols) * tile.height))
    with open_file(path, "wb") as f:
        sheet.save(f, format="PNG")
    return path
