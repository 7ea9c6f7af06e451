"""Path parameters of a deployed flow stay inside the deployment's data roots.

A deployment's parameters can be set by anyone who may trigger a run (the UI, an automation, the API). When the
worker's environment names roots in `LAMBDA_ECLIPSE_DATA_ROOTS` (comma-separated local folders or URLs, e.g.
`/data,/runs,s3://bucket/lambda`), every path a flow is given must lie inside one of them after `..` and
symlinks are resolved, so `../../etc` cannot reach outside. Unset (a person's own CLI), nothing is confined.
"""

from __future__ import annotations

import os
import posixpath
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


def confine(**paths: str | list[str] | None) -> None:
    """Raise a one-line UserError naming the parameter whose path is outside every data root (if roots are set)."""
    roots = data_roots()
    if not roots:
        return
    for parameter, value in paths.items():
        for item in [value] if isinstance(value, str) else value or []:
            where = _normal(location(item))
            if not any(where == root or where.startswith(root.rstrip("/") + "/") for root in roots):
                raise UserError(
                    f"{parameter}={item!r} is outside this deployment's data roots ({', '.join(roots)}, "
                    f"from {DATA_ROOTS}); give a path inside them"
                )
