"""Inputs → work units (in the flow process, from listings only) and work units → samples (on the Ray worker).

A work unit is what one Ray task turns into one shard: a tar, or a fixed-size chunk of a folder's sorted file
list. Planning lists names and sizes and never opens a file, so 10,000 tars on object storage plan in seconds;
the worker that builds a unit streams its tar members (`iter_samples`), and a tar that turns out corrupt or
truncated gives the samples it could read plus one reject for the unreadable rest. Inputs are local paths or
fsspec URLs (`storage/fs.py`); a sample's source names it as the input was given, so any process can read it.
"""

from __future__ import annotations

import hashlib
import json
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

    @property
    def description(self) -> str:
        if self.kind == "tar":
            return f"tar {self.root}"
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
        return digest.hexdigest()[:16]

    def iter_samples(self, extensions: tuple[str, ...]) -> Iterator[Sample]:
        """The unit's samples in a deterministic order; runs on the worker that builds the shard."""
        if self.kind == "folder":
            for relative, size in self.files:
                source = str(join(self.root, *relative.split("/")))
                yield Sample(key=sample_key(source), source=source, ref=SourceRef(source, 0, size))
        else:
            yield from _stream_tar(self.root, tuple(e.lower() for e in extensions))


def sample_key(source: str) -> str:
    """Stable, unique and WebDataset-safe (no dots): the hash of where the sample came from."""
    return hashlib.sha1(source.encode()).hexdigest()[:16]


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


def _stream_tar(path: str, extensions: tuple[str, ...]) -> Iterator[Sample]:
    """WebDataset semantics: consecutive members sharing a key (basename up to its first dot) are one sample.

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
                    if sample is not None:
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
        if sample is not None:
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


def plan_units(listing: Listing, unit_size: int, previous: list[WorkUnit] | None = None) -> UnitPlan:
    """Work units for `listing`. Units of `previous` (the manifest) keep their boundaries and shard numbers;
    inputs that no previous unit holds become new units after them, so a growing input builds incrementally."""
    if unit_size < 1:
        raise UserError(f"input.unit_size must be at least 1, got {unit_size}")
    units = [WorkUnit(u.shard, u.kind, u.root, list(u.files), u.start) for u in previous or []]
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
                units.append(WorkUnit(shard, "tar", tar, [("", size)]))
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
