"""Inputs → work units (in the flow process, from listings only) and work units → samples (on the Ray worker).

A work unit is what one Ray task turns into one shard: a tar, or a fixed-size chunk of a folder's sorted file
list. Planning lists names and sizes and never opens a file, so 10,000 tars on object storage plan in seconds;
the worker that builds a unit streams its tar members (`iter_samples`), and a tar that turns out corrupt or
truncated gives the samples it could read plus one reject for the unreadable rest. Inputs are local paths or
fsspec URLs (`storage/fs.py`); a sample's source names it as the input was given, so any process can read it.

`sample_listing` picks a deterministic, stratified sample of a listing (`build-dataset --sample`): whole folder files,
and a fraction of the members of some tars (`WorkUnit.fraction`), since a tar's member count is unknown until read.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import posixpath
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from fsspec.implementations.local import LocalFileSystem

from lambda_eclipse.errors import UserError
from storage.fs import Location, join, location, open_file, resolve
from storage.sample import Sample, SourceRef

CAPTION_EXTENSIONS = (".txt", ".json")
UnitKind = Literal["folder", "tar"]


@dataclass
class WorkUnit:
    """One shard's inputs. `root` is the folder (kind "folder") or the tar itself (kind "tar"), as given;
    `files` are (path relative to root, size in bytes): the folder's chunk, or [("", tar size)]."""

    shard: int
    kind: UnitKind
    root: str
    files: list[tuple[str, int]] = field(default_factory=list)
    start: int = 0  # the chunk's place in the folder listing when it was planned (for the description)
    fraction: float = 1.0  # tars only: the share of its samples kept (a sample build, `sample_listing`)

    @property
    def description(self) -> str:
        if self.kind == "tar":
            return f"tar {self.root}" + (f" (sample: {self.fraction:.3g} of its members)" if self.fraction < 1 else "")
        return f"folder {self.root} [{self.start}:{self.start + len(self.files)}]"

    @property
    def images(self) -> int | None:
        """Known for folders; a tar's images are counted by the worker that reads it."""
        return len(self.files) if self.kind == "folder" else None

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self.files)

    def fingerprint(self) -> str:
        """Identifies the unit's inputs (names and sizes): a complete shard is never reused for changed inputs."""
        digest = hashlib.sha256(f"{self.kind}\0{self.root}\n".encode())
        for relative, size in self.files:
            digest.update(f"{relative}\0{size}\n".encode())
        if self.fraction < 1:  # only then: the fingerprints of every unit written before sampling stay as they were
            digest.update(f"fraction\0{self.fraction!r}\n".encode())
        return digest.hexdigest()[:16]

    def iter_samples(self, extensions: tuple[str, ...]) -> Iterator[Sample]:
        """The unit's samples in a deterministic order; runs on the worker that builds the shard."""
        if self.kind == "folder":
            for relative, size in self.files:
                source = str(join(self.root, *relative.split("/")))
                yield Sample(key=sample_key(source), source=source, ref=SourceRef(source, 0, size))
        else:
            yield from _stream_tar(self.root, tuple(e.lower() for e in extensions), self.fraction)


def sample_key(source: str) -> str:
    """Stable, unique and WebDataset-safe (no dots): the hash of where the sample came from."""
    return hashlib.sha1(source.encode()).hexdigest()[:16]


def in_sample(key: str, fraction: float) -> bool:
    """Whether a sample of a tar unit with this `fraction` is built: a hash of its key, uniform on [0, 1), below the
    fraction; the same samples on every run and every worker. The hash is salted: the split is drawn from the plain
    sha256 of the key (docs/shard-contract.md), and a sample must hold train and val samples in their proportions."""
    return fraction >= 1 or int(hashlib.sha256(f"sample\0{key}".encode()).hexdigest()[:8], 16) / 2**32 < fraction


def _caption(members: dict[str, bytes]) -> str | None:
    if ".txt" in members:
        return members[".txt"].decode("utf-8", "replace").strip()
    if ".json" in members:
        try:
            caption = json.loads(members[".json"]).get("caption")
        except (ValueError, AttributeError):
            return None
        return caption if isinstance(caption, str) else None
    return None


def _group_sample(path: str, group: dict[str, tuple[tarfile.TarInfo, bytes]], extensions) -> Sample | None:
    image = next((ext for ext in group if ext.endswith(extensions)), None)
    if image is None:
        return None
    info, data = group[image]
    source = f"{path}#{info.name}"
    captions = {ext: raw for ext, (_, raw) in group.items() if ext in CAPTION_EXTENSIONS}
    return Sample(
        key=sample_key(source),
        source=source,
        ref=SourceRef(path, info.offset_data, info.size),
        source_caption=_caption(captions),
        data=data,
    )


def _stream_tar(path: str, extensions: tuple[str, ...], fraction: float = 1.0) -> Iterator[Sample]:
    """WebDataset semantics: consecutive members sharing a key (basename up to its first dot) are one sample; with
    `fraction` < 1 only the samples `in_sample` are yielded (the tar is read through all the same: it is one stream).

    One sequential read, members held one group at a time. A read error ends the stream with a sample rejected
    at decode that names the tar, how far it was read and why, so one bad tar of thousands costs only itself.
    """
    current, group = None, {}
    members = 0
    try:
        with open_file(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                directory, _, base = info.name.rpartition("/")
                stem, dot, ext = base.partition(".")
                key = f"{directory}/{stem}" if directory else stem
                if key != current and group:
                    sample = _group_sample(path, group, extensions)
                    if sample is not None and in_sample(sample.key, fraction):
                        yield sample
                    group = {}
                current = key
                reader = tar.extractfile(info)
                group[f"{dot}{ext}".lower()] = (info, reader.read() if reader is not None else b"")
                members += 1
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        bad = Sample(key=sample_key(f"{path}#unreadable"), source=f"{path}#unreadable", ref=SourceRef(path))
        bad.reject_at("decode", f"tar unreadable after {members} members ({exc or type(exc).__name__}); rest skipped")
        group = {}  # the group being read when the error came may be incomplete
        yield bad
        return
    if group:
        sample = _group_sample(path, group, extensions)
        if sample is not None and in_sample(sample.key, fraction):
            yield sample


@dataclass
class Listing:
    """What planning found in the inputs: per input, its tars or its image files, and files skipped."""

    tars: list[tuple[str, list[tuple[str, int]]]] = field(default_factory=list)  # (input, [(tar, size)])
    folders: list[tuple[str, list[tuple[str, int]]]] = field(default_factory=list)  # (root, [(rel, size)])
    skipped: int = 0
    loops: list[str] = field(default_factory=list)  # symlinked folders not followed: "link → target"


def _local_walk(base: str, loops: list[str]) -> Iterator[tuple[str, int]]:
    """(path relative to base, size) of every file under a local folder, following symlinked folders except those
    that lead back into a folder already walked (a loop, or the same folder twice): those are named in `loops`."""
    seen = {os.path.realpath(base)}
    for directory, subdirs, files in os.walk(base, followlinks=True):
        relative = os.path.relpath(directory, base)
        prefix = "" if relative == "." else relative + "/"
        for sub in list(subdirs):
            target = os.path.realpath(os.path.join(directory, sub))
            if target in seen:
                subdirs.remove(sub)
                loops.append(f"{os.path.join(directory, sub)} → {target}")
            else:
                seen.add(target)
        for file in files:
            try:
                yield prefix + file, os.stat(os.path.join(directory, file)).st_size
            except OSError:  # a dangling symlink: listed, then rejected at decode with the reason
                yield prefix + file, -1


def _folder_files(root: Location, extensions: tuple[str, ...],
                  loops: list[str]) -> tuple[list[tuple[str, int]], list[tuple[str, int]], int]:
    """Every image and every WebDataset tar under `root`, at any depth, sorted as paths (component by component), and
    the count of other files; one listing, no reads. Tars are returned as (their own location, size)."""
    fs, base = resolve(root)
    if isinstance(fs, LocalFileSystem):
        found: Iterable[tuple[str, int]] = _local_walk(base, loops)
    else:  # object stores have no symlinks
        listed: dict[str, dict] = fs.find(base, detail=True)  # pyright: ignore[reportAssignmentType] - detail: a dict
        found = ((path[len(base.rstrip("/")) + 1 :], info["size"]) for path, info in listed.items())
    files, tars, skipped = [], [], 0
    for relative, size in found:
        if relative.lower().endswith(extensions):
            files.append((relative.split("/"), size))
        elif relative.endswith(".tar"):
            tars.append((relative.split("/"), size))
        else:
            skipped += 1
    files.sort()
    tars.sort()
    return ([("/".join(parts), size) for parts, size in files],
            [(str(join(root, *parts)), size) for parts, size in tars], skipped)


def list_inputs(inputs: list[str], extensions: tuple[str, ...]) -> Listing:
    """List every input (names and sizes only); every problem with an input path is raised here, before work."""
    if not inputs:
        raise UserError("no --input given; pass a folder of images or WebDataset .tar files")
    extensions = tuple(e.lower() for e in extensions)
    listing = Listing()
    for item in inputs:
        path = location(item)
        fs, fs_path = resolve(path)
        if not fs.exists(fs_path):
            raise UserError(f"input {item} does not exist; pass an existing folder or .tar file")
        if fs.isdir(fs_path):
            # A folder's images (at any depth) become folder units, its tars (at any depth) tar units: a folder
            # of both builds both.
            files, tars, skipped = _folder_files(path, extensions, listing.loops)
            if tars:
                listing.tars.append((str(path), tars))
            if files or not tars:
                listing.folders.append((str(path), files))
            listing.skipped += skipped
        elif str(path).endswith(".tar"):
            listing.tars.append((str(path), [(str(path), int(fs.info(fs_path)["size"]))]))
        else:
            raise UserError(f"input {item} is neither a folder nor a .tar file")
    if not any(tars for _, tars in listing.tars) and not any(files for _, files in listing.folders):
        raise UserError(
            f"no images found in {', '.join(inputs)} (extensions: {', '.join(extensions)}); "
            "check the paths or set input.extensions"
        )
    return listing


def _changes(unit: WorkUnit, current: dict[str, int] | None) -> list[str]:
    """How the unit's inputs differ from what is there now (empty: unchanged)."""
    if current is None:
        return [f"{unit.root}: no longer among the inputs"]
    found = []
    for relative, size in unit.files:
        label = posixpath.join(unit.root, relative) if relative else unit.root
        if relative not in current:
            found.append(f"{label}: missing")
        elif current[relative] != size:
            found.append(f"{label}: {size} → {current[relative]} bytes")
    return found


@dataclass
class UnitPlan:
    units: list[WorkUnit]  # every unit of the dataset, old and new, by shard
    active: set[int]  # shards whose inputs are among this run's inputs
    changed: dict[int, list[str]]  # shard → what changed in its inputs since the manifest was written
    new: int  # units added by this plan
    skipped: int  # non-image files in folder inputs


def plan_units(listing: Listing, unit_size: int, previous: list[WorkUnit] | None = None,
               tar_fraction: float = 1.0) -> UnitPlan:
    """Work units for `listing`. Units of `previous` (the manifest) keep their boundaries, shard numbers and
    fractions; inputs that no previous unit holds become new units after them, so a growing input builds
    incrementally. New tar units keep `tar_fraction` of their members (a sample: `SampledListing.fraction`)."""
    if unit_size < 1:
        raise UserError(f"input.unit_size must be at least 1, got {unit_size}")
    units = [WorkUnit(u.shard, u.kind, u.root, list(u.files), u.start, u.fraction) for u in previous or []]
    tars = {t: size for _, found in listing.tars for t, size in found}
    folders = {root: dict(files) for root, files in listing.folders}
    changed: dict[int, list[str]] = {}
    active: set[int] = set()
    held: dict[str, set[str]] = {}  # root → relative names already in a unit
    for unit in units:
        if unit.kind == "tar":
            current = {"": tars[unit.root]} if unit.root in tars else None
        else:
            current = folders.get(unit.root)
        if current is not None:
            active.add(unit.shard)
        held.setdefault(unit.root, set()).update(relative for relative, _ in unit.files)
        found = _changes(unit, current) if current is not None else []
        if found:
            changed[unit.shard] = found
            # if its shard is incomplete, the unit is built from its inputs as they are now (a complete one is refused)
            unit.files = [(f, (current or {}).get(f, size)) for f, size in unit.files]
    shard = max((u.shard for u in units), default=-1) + 1
    first_new = len(units)
    for _, found in listing.tars:
        for tar, size in found:
            if tar not in held:
                units.append(WorkUnit(shard, "tar", tar, [("", size)], fraction=tar_fraction))
                active.add(shard)
                held[tar] = {""}
                shard += 1
    for root, files in listing.folders:
        known = held.get(root, set())
        fresh = [(relative, size) for relative, size in files if relative not in known]
        offset = len(known)
        for i in range(0, len(fresh), unit_size):
            units.append(WorkUnit(shard, "folder", root, fresh[i : i + unit_size], offset + i))
            active.add(shard)
            shard += 1
    return UnitPlan(units, active, changed, len(units) - first_new, listing.skipped)


def plan_inputs(inputs: list[str], unit_size: int, extensions: tuple[str, ...]) -> UnitPlan:
    """Units for a fresh dataset: list the inputs, then plan (no manifest)."""
    return plan_units(list_inputs(inputs, extensions), unit_size)


SAMPLE_MIN_TARS = 16  # a sample of tars reads at least this many (or all), so that it spreads over the corpus
HEADERS_READ = 1000  # tar members whose headers estimate a tar's bytes per sample


@dataclass(frozen=True)
class SampledListing:
    """A sample of a listing: plan `listing` as usual, with `plan_units(..., tar_fraction=fraction)`."""

    listing: Listing  # the sampled folder files and tars
    fraction: float  # of each sampled tar's samples, kept (1.0: whole tars)
    images: int  # images of the whole listing (tars' estimated: `estimated`)
    sample_images: int  # images the sample is expected to have
    estimated: bool  # the listing has tars: `images` and `sample_images` are estimates


def _rank(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _stratified(groups: dict[tuple[str, str], list[str]], target: int) -> set[tuple[str, str]]:
    """`target` (root, name) pairs of `groups` (root, directory) → names: each group's quota is proportional to its
    size (largest remainder, so the quotas sum to `target`), and within a group the names of smallest hash."""
    total = sum(len(names) for names in groups.values())
    keys = sorted(groups)
    quota = {k: target * len(groups[k]) // total for k in keys}
    remainder = {k: target * len(groups[k]) % total for k in keys}
    for k in sorted(keys, key=lambda k: -remainder[k])[: target - sum(quota.values())]:  # stable: ties by key
        quota[k] += 1
    return {(k[0], name) for k in keys for name in sorted(groups[k], key=lambda n: (_rank(n), n))[: quota[k]]}


def _tar_bytes_per_sample(path: str) -> float:
    """Bytes per sample of a tar, from the headers of its first members only (their data is skipped, not read)."""
    groups, end = set(), 0
    try:
        with open_file(path, "rb") as f, tarfile.open(fileobj=f, mode="r:*") as tar:
            for i, info in enumerate(tar):
                directory, _, base = info.name.rpartition("/")
                if info.isfile() and not base.lower().endswith(CAPTION_EXTENSIONS):
                    groups.add((directory, base.partition(".")[0]))
                end = info.offset_data + -(-info.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                if i + 1 >= HEADERS_READ:
                    break
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise UserError(f"--sample: cannot read {path} to estimate the tars' image count ({exc}); "
                        "pass --sample as a fraction such as 0.01") from None
    if not groups:
        raise UserError(f"--sample: {path} has no image members to estimate the tars' image count from; "
                        "pass --sample as a fraction such as 0.01")
    return end / len(groups)


def sample_listing(listing: Listing, n: float) -> SampledListing:
    """A deterministic, stratified sample of `listing`: `n` < 1 a fraction of its inputs, `n` ≥ 1 a count of them.

    Folder images are sampled by directory (within each input): each directory's quota is proportional to its images,
    and inside it the files whose relative path hashes smallest are taken, so the same listing gives the same sample
    in any listing order, and a count gives exactly that many folder images (when there are no tars). A tar's member
    count is unknown before it is read: k of the T tars are taken (k = min(T, max(⌈p·T⌉, min(T, 16))), spread over
    their folders the same way, by the hash of each tar's path) and a fraction q = min(1, p·T/k) of each one's
    samples is kept, so a 1 % sample of 100,000 tars reads 1,000 of them and a small corpus still spreads over 16.

    With tars, the listing's image count is an estimate: their bytes over the mean size of the listed folder images,
    or, without folder images, over the bytes per sample of the first tar (the headers of its first members are
    read, nothing else). A count `n` is then turned into the fraction p = n / that estimate.
    """
    if not n > 0 or (n >= 1 and not float(n).is_integer()):
        raise UserError(f"--sample {n}: give a fraction of the inputs below 1 (such as 0.01) or a whole count of "
                        "input photos (such as 500)")
    folders: dict[tuple[str, str], list[str]] = {}
    for root, files in listing.folders:
        for relative, _ in files:
            folders.setdefault((root, relative.rpartition("/")[0]), []).append(relative)
    tars: dict[tuple[str, str], list[str]] = {}
    for item, found in listing.tars:
        for tar, _ in found:
            tars.setdefault((item, tar.rpartition("/")[0]), []).append(tar)
    folder_images = sum(len(v) for v in folders.values())
    tar_count = sum(len(v) for v in tars.values())
    tar_bytes = sum(size for _, found in listing.tars for _, size in found)
    tar_images = 0.0
    if tar_count:
        sizes = [size for _, files in listing.folders for _, size in files if size > 0]
        per = sum(sizes) / len(sizes) if sizes else _tar_bytes_per_sample(listing.tars[0][1][0][0])
        tar_images = max(float(tar_count), tar_bytes / per)
    images = folder_images + round(tar_images)
    if not images:
        raise UserError("--sample: the inputs hold no images to sample")
    p = min(1.0, n if n < 1 else n / images)
    chosen = _stratified(folders, min(folder_images, max(1, round(p * folder_images)))) if folder_images else set()
    k = min(tar_count, max(math.ceil(p * tar_count - 1e-9), min(tar_count, SAMPLE_MIN_TARS)))
    picked = _stratified(tars, k) if tar_count else set()
    q = p * tar_count / k if k else 1.0
    fraction = 1.0 if q > 1 - 1e-9 else q  # p·T/k is 1 up to rounding whenever every picked tar is whole
    sampled = Listing(
        tars=[(item, [(t, size) for t, size in found if (item, t) in picked]) for item, found in listing.tars],
        folders=[(root, [(f, size) for f, size in files if (root, f) in chosen]) for root, files in listing.folders],
        skipped=listing.skipped, loops=list(listing.loops),
    )
    picked_bytes = sum(size for _, found in sampled.tars for _, size in found)
    expected_tars = tar_images * picked_bytes / tar_bytes * fraction if tar_bytes else 0.0
    return SampledListing(sampled, fraction, images, len(chosen) + round(expected_tars), estimated=tar_count > 0)
