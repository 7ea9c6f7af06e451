"""Input enumeration: folders of images (recursive) and img2dataset-style WebDataset tars → work units.

A work unit is what one Prefect task turns into one shard: a tar, or a fixed-size chunk of a folder's
sorted file list. Enumeration reads only names and tar headers, never pixels, and every problem with an
input path is raised here, before any work starts. Inputs are local paths or fsspec URLs (`storage/fs.py`); a
sample's source and `SourceRef` name it as the input was given, so any process can read it.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass, field

from lambda_eclipse.errors import UserError
from lambda_eclipse.sample import Sample, SourceRef
from lambda_eclipse.storage.fs import Location, join, location, name, resolve

CAPTION_EXTENSIONS = (".txt", ".json")


@dataclass
class WorkUnit:
    shard: int
    description: str  # "folder /data/imgs [0:1000]" or "tar /data/00003.tar"
    samples: list[Sample] = field(default_factory=list)

    def fingerprint(self) -> str:
        """Identifies the unit's inputs: a rerun whose inputs changed must not reuse this shard."""
        digest = hashlib.sha256()
        for s in self.samples:
            digest.update(f"{s.source}\0{s.ref.size}\n".encode())
        return digest.hexdigest()[:16]


def sample_key(source: str) -> str:
    """Stable, unique and WebDataset-safe (no dots): the hash of where the sample came from."""
    return hashlib.sha1(source.encode()).hexdigest()[:16]


def _folder_samples(root: Location, extensions: tuple[str, ...]) -> tuple[list[Sample], int]:
    """Every image under `root`, recursively, sorted as paths (component by component); one listing, no reads."""
    fs, base = resolve(root)
    files, skipped = [], 0
    for path, info in fs.find(base, detail=True).items():
        relative = path[len(base.rstrip("/")) + 1 :]
        if relative.lower().endswith(extensions):
            files.append((relative.split("/"), info["size"]))
        else:
            skipped += 1
    files.sort()
    samples = []
    for parts, size in files:
        source = str(join(root, *parts))
        samples.append(Sample(key=sample_key(source), source=source, ref=SourceRef(source, 0, size)))
    return samples, skipped


def _tar_samples(path: Location, extensions: tuple[str, ...]) -> list[Sample]:
    """Index the members by WebDataset key (basename up to its first dot); bytes are read later by offset."""
    fs, fs_path = resolve(path)
    try:
        with fs.open(fs_path, "rb") as f, tarfile.open(fileobj=f) as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            groups: dict[str, dict[str, tarfile.TarInfo]] = {}
            for m in members:
                directory, _, base = m.name.rpartition("/")
                stem, dot, ext = base.partition(".")
                groups.setdefault(f"{directory}/{stem}" if directory else stem, {})[f"{dot}{ext}".lower()] = m
            samples = []
            for key in sorted(groups):
                group = groups[key]
                image = next((group[e] for e in group if e.endswith(extensions)), None)
                if image is None:
                    continue
                caption = None
                if ".txt" in group:
                    caption = tar.extractfile(group[".txt"]).read().decode("utf-8", "replace").strip()
                elif ".json" in group:
                    try:
                        caption = json.loads(tar.extractfile(group[".json"]).read()).get("caption")
                    except (ValueError, AttributeError):
                        caption = None
                source = f"{path}#{image.name}"
                samples.append(
                    Sample(
                        key=sample_key(source),
                        source=source,
                        ref=SourceRef(str(path), image.offset_data, image.size),
                        source_caption=caption,
                    )
                )
            return samples
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"input tar {path} cannot be read ({exc}); check the file or leave it out of --input") from None


def plan_units(inputs: list[str], unit_size: int, extensions: tuple[str, ...]) -> tuple[list[WorkUnit], int]:
    """All work units in a stable order, and the number of non-image files skipped in folders."""
    if not inputs:
        raise UserError("no --input given; pass a folder of images or WebDataset .tar files")
    if unit_size < 1:
        raise UserError(f"input.unit_size must be at least 1, got {unit_size}")
    extensions = tuple(e.lower() for e in extensions)
    units: list[WorkUnit] = []
    skipped = 0
    for item in inputs:
        path = location(item)
        fs, fs_path = resolve(path)
        if not fs.exists(fs_path):
            raise UserError(f"input {item} does not exist; pass an existing folder or .tar file")
        if fs.isdir(fs_path):
            entries = {name(e["name"]): e["type"] for e in fs.ls(fs_path, detail=True)}
            tars = [join(path, n) for n in sorted(entries) if n.endswith(".tar")]
            if tars and not any(t == "file" and n.lower().endswith(extensions) for n, t in entries.items()):
                sources = [(f"tar {t}", _tar_samples(t, extensions)) for t in tars]
            else:
                samples, n = _folder_samples(path, extensions)
                skipped += n
                sources = [
                    (f"folder {path} [{i}:{i + len(samples[i:i + unit_size])}]", samples[i : i + unit_size])
                    for i in range(0, len(samples), unit_size)
                ]
        elif str(path).endswith(".tar"):
            sources = [(f"tar {path}", _tar_samples(path, extensions))]
        else:
            raise UserError(f"input {item} is neither a folder nor a .tar file")
        for description, samples in sources:
            units.append(WorkUnit(shard=len(units), description=description, samples=samples))
    if not any(u.samples for u in units):
        raise UserError(
            f"no images found in {', '.join(inputs)} (extensions: {', '.join(extensions)}); "
            "check the paths or set input.extensions"
        )
    return units, skipped
