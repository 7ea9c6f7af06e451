"""decontaminate flow: find the training samples that match a benchmark's images (evaluation/leaks.py) and mark them
in the dataset's `leaks` mark set, which train-prior's loader skips. The scan runs as Ray tasks over shard chunks; this
process plans them and receives the matches. The report is a markdown artifact (`decontaminate-report`) and, when
something matched, an image of each training sample beside its benchmark image (`decontaminate-pairs`); the run
completes whether or not leaks were found. The retrain flow runs it before it trains.
"""

from __future__ import annotations

import base64

from prefect import flow, get_run_logger
from prefect.artifacts import create_image_artifact, create_markdown_artifact

from evaluation.leaks import MAX_DISTANCE, SHARDS_PER_TASK, Thresholds, find_leaks, report_image, report_markdown
from storage.confine import confine


@flow(name="decontaminate")
def decontaminate(data: str, against: str, max_distance: int = MAX_DISTANCE, min_similarity: float | None = None,
                  shards_per_task: int = SHARDS_PER_TASK) -> dict:
    """Check every complete shard of `data` against the benchmark folder `against` (one folder of photos per subject);
    returns the number of matching samples, the one-line result, the mark set's summary and the report's path."""
    logger = get_run_logger()
    confine(data=data, against=against)
    result = find_leaks(data, against, Thresholds(max_distance, min_similarity, shards_per_task), log=logger.info)
    (logger.warning if result.matches else logger.info)("%s", result.line())
    create_markdown_artifact(markdown=report_markdown(result), key="decontaminate-report",
                             description=f"benchmark leaks of {data} against {against}")
    if result.matches:
        create_image_artifact(image_url="data:image/png;base64," + base64.b64encode(report_image(result)).decode(),
                              key="decontaminate-pairs", description="each training sample beside its benchmark image")
    summary = {k: v for k, v in result.summary.items() if k != "checked_shards"}  # one digest per shard: not here
    return {"matches": len(result.matches), "line": result.line(), "summary": summary, "report": summary["report"]}
