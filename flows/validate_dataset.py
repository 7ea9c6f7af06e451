"""validate-dataset flow: read back every shard of a built dataset and check it against its `_stats.json` and
`dataset.json` (`storage.validate`). The report is published as a markdown artifact (problems and
one row per shard) and a table artifact; an invalid dataset fails the flow run, with the problems as the state
message, so that a deployment run (or an automation chained on it) stops there.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from storage.confine import confine
from storage.validate import DatasetInvalid, validate


@flow(name="validate-dataset")
def validate_dataset(data: str, split_tolerance: float | None = None) -> dict:
    """Check the dataset in `data` (a path or an fsspec URL); fails with the problems found, naming each shard."""
    logger = get_run_logger()
    confine(data=data)
    report = validate(data, split_tolerance)
    for line in report.text().splitlines():
        logger.info(line)
    create_markdown_artifact(markdown=report.markdown(), key="validate-dataset-report",
                             description=f"validation of {data}")
    if report.shards:
        create_table_artifact(table=report.rows(), key="validate-dataset-shards", description="one row per shard")
    result = report.to_dict()
    if not report.ok:
        raise DatasetInvalid(report.summary(), result)
    return result
