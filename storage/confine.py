"""Path parameters of a deployed flow stay inside the deployment's data roots.

A deployment's parameters can be set by anyone who may trigger a run (the UI, an automation, the API). When the
worker's environment names roots in `LAMBDA_ECLIPSE_DATA_ROOTS` (comma-separated local folders or URLs, e.g.
`/data,/runs,s3://bucket/lambda`), every path a flow is given must lie inside one of them after `..` and
symlinks are resolved, so `../../etc` cannot reach outside; so must every file a request names (`confine_files`: the
subject images, masks and Canny images of generate's requests and batch files, evaluate's subject photos). Unset (a
person's own CLI), nothing is confined.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable
from pathlib import Path

from lambda_eclipse.errors import UserError
from storage.fs import location

DATA_ROOTS = "LAMBDA_ECLIPSE_DATA_ROOTS"


def _normal(loc: Path | str) -> str:
    if isinstance(loc, Path):
        return os.path.realpath(loc)
    protocol, _, rest = loc.partition("://")
    return f"{protocol}://{posixpath.normpath('/' + rest).lstrip('/')}"


def data_roots() -> list[str]:
    return [_normal(location(r)) for r in os.environ.get(DATA_ROOTS, "").split(",") if r.strip()]


def _inside(item: str, roots: list[str]) -> bool:
    where = _normal(location(item))
    return any(where == root or where.startswith(root.rstrip("/") + "/") for root in roots)


def confine(**paths: str | list[str] | None) -> None:
    """Raise a one-line UserError naming the parameter whose path is outside every data root (if roots are set)."""
    roots = data_roots()
    if not roots:
        return
    for parameter, value in paths.items():
        for item in [value] if isinstance(value, str) else value or []:
            if not _inside(item, roots):
                raise UserError(
                    f"{parameter}={item!r} is outside this deployment's data roots ({', '.join(roots)}, "
                    f"from {DATA_ROOTS}); give a path inside them"
                )


def confine_files(files: Iterable[tuple[str, str | None]]) -> None:
    """The files a request names (a generate request's subject images, masks and Canny image; an evaluation's subject
    photos), as (what, path): a one-line UserError naming the first outside every data root (if roots are set),
    before any of them is read."""
    roots = data_roots()
    if not roots:
        return
    for what, path in files:
        if path is not None and not _inside(path, roots):
            raise UserError(f"{what}: {path!r} is outside this deployment's data roots ({', '.join(roots)}, from "
                            f"{DATA_ROOTS}); name a file inside them")
