"""build-dataset flow: the control plane. It plans work units from listings (`DIR/manifest.parquet`), starts one
actor pool per model stage, submits one Ray task per unit (which reads, processes and writes its shard on a
worker), and watches: per-shard stats come back (kilobytes), and progress, a shard table, the funnel and a
contact sheet are published as Prefect artifacts (the dashboard). The flow process never touches pixels.

Complete shards are skipped on a rerun; new inputs become new shards. Inputs and output are local paths or fsspec
URLs (`storage/fs.py`) that every Ray worker reads and writes itself.
"""

from __future__ import annotations

import time

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

from flows.build_watch import BuildWatch
from flows.prepared import prepared
from lambda_eclipse.errors import BuildError
from lambda_eclipse.ray_session import ray_session
from storage.confine import confine
from storage.dataset_meta import write_meta
from storage.fs import join, name, uri, write_bytes
from storage.layout import read_json, shard_paths
from storage.manifest import write_manifest
from storage.report import contact_sheet, dropped_subjects, funnel_markdown, thumbnail_markdown
from tasks.plan import BuildPlan, prepare_build

TABLE_EVERY_SHARDS = 20  # the shard table artifact is re-published at most this often …
TABLE_EVERY_SECONDS = 60.0  # … or once a minute, and at the end


@task(name="plan-build", cache_policy=NO_CACHE)
def plan_build(inputs, output, profile, config_file, overrides, workers, gpus_per_stage, config) -> BuildPlan:
    plan = prepared("build-dataset", lambda: prepare_build(inputs, output, profile, config_file, overrides, workers,
                                                          gpus_per_stage, config))
    if plan.new:  # before any shard: a rerun, even after a crash, keeps every unit's boundaries
        write_manifest(plan.output, plan.units)
    return plan


def _row(stats: dict) -> dict:
    """One shard table row: counts, rejects per stage, and samples/s of each stage on this shard."""
    rate = {
        f"{f['stage']} /s": round(f["in"] / stats["stage_seconds"][f["stage"]], 1)
        for f in stats["funnel"]
        if stats["stage_seconds"].get(f["stage"])
    }
    return (
        {"shard": f"{stats['shard']:05d}", "inputs": stats["inputs"], "accepted": stats["accepted"]}
        | {f"rejected: {k}": v for k, v in stats["rejected_by_stage"].items()}
        | {"images/s": stats["images_per_second"]}
        | rate
    )


def _run_units(plan: BuildPlan, meta: dict, pools, on_done) -> None:
    """Keep up to `in_flight` unit tasks running; call `on_done(unit, stats)` as each finishes."""
    import ray

    from lambda_eclipse.ray_session import cluster_resources
    from tasks.actors import unit_cpus
    from tasks.unit import build_unit

    cfg = plan.cfg
    sizes = [len(pool) for pool in pools.handles().values()]
    in_flight = cfg.runtime.units_in_flight or max(2, 2 * max(sizes))
    remote = ray.remote(num_cpus=unit_cpus(cfg, cluster_resources()), max_retries=2)(build_unit)
    handles = ray.put(pools.handles())
    queue = list(plan.todo)
    running: dict = {}
    while queue or running:
        while queue and len(running) < in_flight:
            unit = queue.pop(0)
            running[remote.remote(unit, str(plan.output), cfg, plan.profile, meta, handles)] = unit
        (ready,), _ = ray.wait(list(running), num_returns=1)
        unit = running.pop(ready)
        try:
            stats = ray.get(ready)
        except Exception as exc:  # any failure of a unit stops the build, reported in one line
            for ref in running:  # on a shared cluster nothing keeps running for a failed build
                ray.cancel(ref, force=True)
            cause = getattr(exc, "cause", None) or exc
            reason = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
            raise BuildError(f"shard {unit.shard:05d} ({unit.description}) failed on a Ray worker: {reason}") from exc
        on_done(unit, stats)


@flow(name="build-dataset")
def build_dataset(
    inputs: list[str],
    output: str,
    profile: str = "tiny",
    config_file: str | None = None,
    overrides: list[str] | None = None,
    workers: int = 0,
    gpus_per_stage: dict[str, float] | None = None,
    config: dict | None = None,
) -> dict:
    """Build λ-ECLIPSE training shards from image folders or WebDataset tars into `output`.

    `config` is a resolved configuration (as `lambda-eclipse build-dataset` passes it); without it the flow
    resolves `config_file` and `overrides` itself."""
    logger = get_run_logger()
    confine(inputs=inputs, output=output, config_file=config_file)
    plan = plan_build(inputs, output, profile, config_file, overrides, workers, gpus_per_stage, config)
    total = len(plan.units)
    logger.info(plan.summary())
    progress = create_progress_artifact(
        progress=100.0 * len(plan.complete) / total, key="build-dataset-progress", description="shards complete / total"
    )
    rows: list[dict] = []
    done = len(plan.complete)
    nodes: set[str] = set()  # Ray nodes that ran this build's actors and unit tasks
    last_table = (time.monotonic(), 0)

    def publish_table(final: bool = False) -> None:
        nonlocal last_table
        at, count = last_table
        if rows and (final or len(rows) - count >= TABLE_EVERY_SHARDS or time.monotonic() - at >= TABLE_EVERY_SECONDS):
            create_table_artifact(table=rows, key="build-dataset-shards", description="one row per shard built")
            last_table = (time.monotonic(), len(rows))

    if plan.todo:
        from tasks.actors import StagePools

        with ray_session(plan.cfg.runtime.workers), tqdm(
            total=len(plan.todo), unit="shard", desc="build-dataset", disable=None
        ) as bar:
            pools = StagePools(plan.cfg, profile, logger)
            nodes.update(pools.nodes)
            logger.info("model actors ready on %d node(s): %s", len(pools.nodes), pools.describe())
            try:
                cfg = plan.cfg
                meta = plan.meta or write_meta(plan.output, cfg.to_dict(), cfg.content_hash(), profile,
                                               cfg.model_ids(profile), pools.describe_clip())
                watch = BuildWatch(plan.todo, lambda: {n: len(a) for n, a in pools.handles().items()})  # rate, ETA

                def on_done(unit, stats: dict) -> None:
                    nonlocal done
                    done += 1
                    nodes.add(stats["node"])
                    bar.update()
                    logger.info(
                        "shard %05d: %d accepted, %d rejected, %.2f images/s (%d/%d shards)",
                        unit.shard, stats["accepted"], stats["rejected"], stats["images_per_second"] or 0, done, total,
                    )
                    watch.shard_done(unit, stats)
                    rows.append(_row(stats) | watch.busy_columns())
                    publish_table()
                    update_progress_artifact(progress, 100.0 * done / total,  # pyright: ignore[reportArgumentType]
                                             description=watch.describe(done, total))

                _run_units(plan, meta, pools, on_done)
            finally:
                pools.shutdown()
        publish_table(final=True)
    built = plan.complete | {u.shard for u in plan.todo}
    all_stats = [read_json(shard_paths(plan.output, u.shard)["stats"]) for u in plan.units if u.shard in built]
    shards = [s["shard"] for s in all_stats]
    sheet = contact_sheet(plan.output, shards, join(plan.output, "contact_sheet.png"))
    markdown = funnel_markdown(all_stats, sheet)
    write_bytes(join(plan.output, "summary.md"), (markdown + "\n").encode())
    create_markdown_artifact(
        markdown=markdown + thumbnail_markdown(sheet),
        key="build-dataset-summary",
        description="funnel and contact sheet",
    )
    if sheet is not None:
        create_link_artifact(link=uri(sheet), link_text=name(sheet), key="build-dataset-contact-sheet")
    summary = {
        "output": str(plan.output),
        "shards": len(all_stats),
        "inputs": sum(s["inputs"] for s in all_stats),
        "accepted": sum(s["accepted"] for s in all_stats),
        "rejected": sum(s["rejected"] for s in all_stats),
        "dropped_subjects": dropped_subjects(all_stats),
        "contact_sheet": str(sheet) if sheet else None,
        "nodes": len(nodes),
    }
    logger.info("done: %s", summary)
    return summary
