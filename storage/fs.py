"""Where the dataset's inputs and outputs live: a local path (the default) or an fsspec URL (`s3://bucket/data`,
`gs://…`, `file:///data`, `memory://…`).

A location is a `Path` when it is on the local filesystem — given as a plain path (kept as given, so relative stays
relative and sample keys, which hash the source path, do not change) or as `file://` — and the URL string
otherwise. Local locations get what only a local filesystem offers: atomic rename and fsync. Everything is passed
around as these strings and paths, never as open files or filesystem objects, so a Ray worker resolves the same URL
itself; credentials and options come from each process's environment (e.g. `AWS_*`, `~/.aws`, fsspec's
`FSSPEC_<PROTOCOL>_<OPTION>` variables).

`memory://` lives in one process's memory: other processes (Ray workers) see an empty filesystem.
"""

from __future__ import annotations

import errno
import os
import posixpath
import time
from pathlib import Path
from typing import IO, Any, cast

import pyarrow.fs as pafs
from fsspec import AbstractFileSystem
from fsspec.core import split_protocol, url_to_fs
from fsspec.implementations.local import LocalFileSystem

from lambda_eclipse.errors import UserError

Location = Path | str
PROCESS_LOCAL = ("memory",)  # protocols whose files other processes cannot see
_LOCAL = LocalFileSystem()
# Reads of inputs are tried again on transient errors (object-store clients retry some themselves first).
READ_TRIES, READ_BACKOFF = 4, 0.5  # 0.5, 1, 2 s between tries
THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
             "RequestTimeout", "InternalError", "ServiceUnavailable"}
TRANSIENT_ERRNOS = {errno.EIO, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EAGAIN, errno.EBUSY}


def _url_to_fs(url: str) -> tuple[AbstractFileSystem, str]:
    """fsspec's filesystem for `url`; an unknown protocol or a missing backend is a one-line UserError."""
    try:
        return url_to_fs(url)
    except ImportError as exc:
        # fsspec raises ImportError("Install s3fs to access S3") from the ModuleNotFoundError naming the package.
        package = getattr(exc.__cause__, "name", None) or getattr(exc, "name", None)
        fix = f"pip install {package}" if package else str(exc)
        protocol = split_protocol(url)[0]
        raise UserError(f"{url}: the {protocol}:// filesystem needs a package that is not installed; {fix}") from None
    except ValueError as exc:
        if "Protocol not known" in str(exc):
            raise UserError(
                f"{url}: unknown storage protocol {split_protocol(url)[0]!r}; give a local path or an fsspec URL "
                "such as file:///data, s3://bucket/data or gs://bucket/data"
            ) from None
        raise UserError(f"{url}: {exc}") from None


def location(url: Location) -> Location:
    """`url` as a location: a Path on the local filesystem, else the URL without a trailing slash."""
    if isinstance(url, Path):
        return url
    url = str(url)
    protocol, path = split_protocol(url)
    if protocol is None:
        return Path(url)
    fs, fs_path = _url_to_fs(url)
    if isinstance(fs, LocalFileSystem):
        return Path(fs_path)
    return f"{protocol}://{path.rstrip('/')}" if path.strip("/") else url


def is_local(loc: Location) -> bool:
    return isinstance(location(loc), Path)


def process_local(loc: Location) -> bool:
    """True for a location that only this process can see (`memory://`)."""
    protocol = split_protocol(str(loc))[0]
    return protocol is not None and protocol.split("::")[0] in PROCESS_LOCAL


def join(loc: Location, *names: str) -> Location:
    loc = location(loc)
    if isinstance(loc, Path):
        return loc.joinpath(*names)
    return loc + ("" if loc.endswith("/") else "/") + "/".join(names)


def name(loc: Location) -> str:
    return posixpath.basename(str(loc).rstrip("/"))


def resolve(loc: Location) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem holding `loc` and the path on it."""
    loc = location(loc)
    if isinstance(loc, Path):
        return _LOCAL, os.path.abspath(loc)
    fs, path = _url_to_fs(loc)
    # fsspec reuses one filesystem per process and caches its listings, but other processes (the Ray workers) write
    # to the same store: s3fs answers "not found" for a file absent from its parent's cached listing (the flow lists
    # shards/ when it plans, then reads the stats its workers wrote). Each call starts from the store as it is now.
    fs.invalidate_cache()
    return fs, path


def arrow(loc: Location) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem holding `loc` and the path on it: Arrow's own for local files (the trainer's reads
    are its bottleneck), fsspec's wrapped in `PyFileSystem` for everything else.

    Arrow reads a `PyFileSystem` file (or an fsspec file object) into Python buffers, which need the GIL when they
    are released. When Arrow reads on its own threads (`pq.read_table`'s pre-buffering, `use_threads=True`), the
    last one can be released there after the read has returned; if the interpreter is exiting by then (a command
    that exits right after reading, e.g. `build-dataset --dry-run` reading the manifest), Python stops that thread
    inside Arrow's C++ and the process aborts (SIGABRT, "terminate called without an active exception";
    apache/arrow#39162). A command that reads such a file and then exits reads it on its own thread:
    `pq.ParquetFile(...).read(use_threads=False)` / `iter_batches(use_threads=False)`, never `pq.read_table`; a
    small file it reads whole, as bytes, before Arrow parses them (storage/manifest.py)."""
    fs, path = resolve(loc)
    if isinstance(fs, LocalFileSystem):
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def open_file(loc: Location, mode: str = "rb") -> IO[Any]:
    """A file object of `loc` (text in UTF-8 unless `mode` has "b"); fsspec's files are file-like, typed here as
    the standard `IO` that tarfile, PIL and pyarrow accept."""
    fs, path = resolve(loc)
    return cast(IO[Any], fs.open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"})))


def is_file(loc: Location) -> bool:
    fs, path = resolve(loc)
    return fs.isfile(path)


def transient(exc: BaseException) -> bool:
    """A storage error worth another try: throttling, a 5xx answer, a dropped or timed-out connection; not a missing
    file or a refused permission."""
    if isinstance(exc, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    response = getattr(exc, "response", None)  # botocore's ClientError, before s3fs translates it
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status == 429 or status >= 500 or response.get("Error", {}).get("Code") in THROTTLED
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


def read_bytes(loc: Location, start: int = 0, end: int | None = None) -> bytes:
    """Bytes `start` to `end` (exclusive; None: to the end) of a file: one ranged read on object stores, tried again
    with backoff on transient errors (`READ_TRIES` in all)."""
    for attempt in range(READ_TRIES):
        fs, path = resolve(loc)
        try:
            # fsspec's unannotated open() makes cat_file's result str | bytes; it reads in "rb", so bytes
            return fs.cat_file(path, start=start, end=end)  # pyright: ignore[reportReturnType]
        except Exception as exc:
            if attempt + 1 == READ_TRIES or not transient(exc):
                raise
            time.sleep(READ_BACKOFF * 2**attempt)
    raise AssertionError("unreachable")


def write_bytes(loc: Location, data: bytes) -> None:
    fs, path = resolve(loc)
    fs.pipe_file(path, data)


def remove(loc: Location) -> None:
    """Delete a file if it exists."""
    fs, path = resolve(loc)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass


def makedirs(loc: Location) -> None:
    fs, path = resolve(loc)
    fs.makedirs(path, exist_ok=True)


def uri(loc: Location) -> str:
    """An address for a link: `file://` for local files, the URL itself otherwise."""
    loc = location(loc)
    return loc.resolve().as_uri() if isinstance(loc, Path) else loc
