"""A plan the CLI prepared, handed to the flow as the flow's one explicit parameter for it.

Each command prepares its plan once. The CLI prepares it before Prefect starts (bad input fails in one line, in a
second) and calls the flow with its plain parameters as the plan resolved them (the config, the profile, the prior)
and `handed=Handed(plan=…, summary=…)`: the flow runs on that plan and does not prepare it again. A deployment's run
or a direct call passes the plain parameters only, and the flow prepares them itself. Either way the flow's body is
one undecorated function of the plan (`run_build(plan)`, `run_train(job, …)`, …), so what a run recorded is what it
ran, and no module state carries a plan from the CLI to the flow.

Prefect records a flow run's parameters through fastapi's `jsonable_encoder`, which dumps a pydantic model by its
fields: `plan` is excluded (a build's plan holds every work unit, 100,000 of them and more), so the run records
`summary`, a few keys of what the plan was prepared from and resolved (its config hash, counts). Prefect's parameter
validation passes the instance through as it is (pydantic does not revalidate model instances). A flow declares
`handed: SkipJsonSchema[Handed | None] = None`: a deployment's parameter schema (its form in the UI) leaves it out,
and a run sent a `handed` without a plan fails validation ("handed.plan: Field required").
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from prefect import get_run_logger
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from lambda_eclipse.config import Deprecated

T = TypeVar("T")


class Handed(BaseModel):
    """The CLI's prepared plan (not recorded) and what the run records of it."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    plan: SkipJsonSchema[Any] = Field(exclude=True, repr=False)
    summary: dict[str, Any] = Field(default_factory=dict)


def config_hash(cfg: Any) -> str:
    """A resolved config's hash (`cfg.to_dict()`, every key): two runs that record the same one ran the same config."""
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan_of(handed: Handed | None, prepare: Callable[[], T]) -> T:
    """The plan handed by the CLI, else the one `prepare()` makes from the run's plain parameters. A renamed key among
    those (a deployment's `overrides` naming `runtime.workers`) is also logged to the run, where the operator of a
    deployment looks, not only to the worker's stderr."""
    if handed is not None:
        return handed.plan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", Deprecated)
        try:
            return prepare()
        finally:
            for warning in caught:
                if issubclass(warning.category, Deprecated):
                    get_run_logger().warning("%s", warning.message)
                else:  # recorded only because this block records: shown as it would have been
                    warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
