"""build-dataset flow: one Prefect task per work unit (a tar, or a chunk of a folder), each running the
stages as a Ray Data pipeline and writing one shard. Progress, per-shard rows, the funnel and a contact
sheet are published as Prefect artifacts (the dashboard). Complete shards are skipped on a rerun.

Inputs and output are local paths or fsspec URLs (`storage/fs.py`). Shards are written by this process, the
images read by Ray workers, so `memory://` works for the output only.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from tqdm import tqdm

from lambda_eclipse.config import BuildConfig
from lambda_eclipse.ray_session import ray_session
from lambda_eclipse.report import contact_sheet, funnel_markdown
from lambda_eclipse.storage.dataset_meta import write_meta
from lambda_eclipse.storage.fs import join, name, uri, write_bytes
from lambda_eclipse.storage.layout import read_json, shard_paths
from lambda_eclipse.storage.sources import WorkUnit
from lambda_eclipse.tasks.pipeline import run_ray
from lambda_eclipse.tasks.plan import describe_clip, prepare_build
from lambda_eclipse.tasks.shard import UnitStream, build_shard


@task(name="describe-clip", cache_policy=NO_CACHE)
def clip_info(cfg: BuildConfig, profile: str) -> dict:
    import ray

    remote = ray.remote(num_gpus=cfg.runtime.gpus.get("features", 0.0))(describe_clip)
    return ray.get(remote.remote(cfg, profile))


@task(name="build-shard", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def build_unit(unit: WorkUnit, output: str, cfg: BuildConfig, meta: dict, stream: UnitStream, bar: tqdm) -> dict:
    # A retry starts the shard from scratch: the failed attempt's temporary files are already gone.
    return build_shard(unit, output, cfg, meta, stream.run, lambda _: bar.update())


@flow(name="build-dataset")
def build_dataset(
    inputs: list[str],
    output: str,
    profile: str = "tiny",
    config_file: str | None = None,
    overrides: list[str] | None = None,
    workers: int = 0,
    gpus_per_stage: dict[str, float] | None = None,
) -> dict:
    """Build λ-ECLIPSE training shards from image folders or WebDataset tars into `output`."""
    logger = get_run_logger()
    plan = prepare_build(inputs, output, profile, config_file, overrides, workers, gpus_per_stage)
    todo = plan.todo
    logger.info(
        "%d work units, %d already complete, %d images to process%s",
        len(plan.units),
        len(plan.units) - len(todo),
        sum(len(u.samples) for u in todo),
        f"; {plan.skipped_files} non-image files skipped" if plan.skipped_files else "",
    )
    progress = create_progress_artifact(
        progress=100.0 * (len(plan.units) - len(todo)) / len(plan.units),
        key="build-dataset-progress",
        description="shards complete / total",
    )
    rows: list[dict] = []
    with ray_session(plan.cfg.runtime.workers), tqdm(
        total=sum(len(u.samples) for u in todo), unit="img", desc="build-dataset", disable=None
    ) as bar:
        meta = plan.meta or write_meta(plan.output, plan.cfg, profile, clip_info(plan.cfg, profile))
        # One streaming Ray Data pipeline for all the units to do; each Prefect task takes its unit's samples.
        stream = UnitStream(todo, lambda samples: run_ray(samples, plan.cfg, profile))
        try:
            for unit in todo:
                stats = build_unit(unit, str(plan.output), plan.cfg, meta, stream, bar)
                done = len(plan.units) - len(plan.todo)
                logger.info(
                    "shard %05d: %d accepted, %d rejected, %.2f images/s (%d/%d shards)",
                    unit.shard, stats["accepted"], stats["rejected"], stats["images_per_second"] or 0, done, len(plan.units),
                )
                rows.append(
                    {"shard": f"{unit.shard:05d}", "inputs": stats["inputs"], "accepted": stats["accepted"]}
                    | {f"rejected: {k}": v for k, v in stats["rejected_by_stage"].items()}
                    | {"images/s": stats["images_per_second"]}
                )
                create_table_artifact(table=rows, key="build-dataset-shards", description="one row per shard built")
                update_progress_artifact(progress, 100.0 * done / len(plan.units))
        finally:
            stream.close()
    all_stats = [read_json(shard_paths(plan.output, u.shard)["stats"]) for u in plan.units]
    sheet = contact_sheet(plan.output, [u.shard for u in plan.units], join(plan.output, "contact_sheet.png"))
    markdown = funnel_markdown(all_stats, sheet)
    write_bytes(join(plan.output, "summary.md"), (markdown + "\n").encode())
    create_markdown_artifact(markdown=markdown, key="build-dataset-summary", description="funnel and contact sheet")
    if sheet is not None:
        create_link_artifact(link=uri(sheet), link_text=name(sheet), key="build-dataset-contact-sheet")
    summary = {
        "output": str(plan.output),
        "shards": len(plan.units),
        "inputs": sum(s["inputs"] for s in all_stats),
        "accepted": sum(s["accepted"] for s in all_stats),
        "rejected": sum(s["rejected"] for s in all_stats),
        "contact_sheet": str(sheet) if sheet else None,
    }
    logger.info("done: %s", summary)
    return summary
