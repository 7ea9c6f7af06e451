"""build-dataset flow: the control plane. It plans work units from listings (`DIR/manifest.parquet`), starts one
actor pool per model stage, submits one Ray task per unit (which reads, processes and writes its shard on a
worker), and watches: per-shard stats come back (kilobytes), and progress, a shard table, the funnel and a
contact sheet are published as Prefect artifacts (the dashboard). The flow process never touches pixels.

Complete shards are skipped on a rerun; new inputs become new shards. Inputs and output are local paths or fsspec
URLs (`storage/fs.py`) that every Ray worker reads and writes itself.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from datetime import UTC, datetime

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
from storage.layout import (
    FAILED,
    clear_failure,
    complete_shards,
    failed_units,
    failure_path,
    read_json,
    record_failure,
    shard_paths,
)
from storage.manifest import write_manifest
from storage.rejects_gallery import gallery_markdown
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


RETRY_BACKOFF = 1.0  # seconds before a failed unit's second try, doubled for each try after it (at most a minute)
INTERRUPTIONS = 10  # times a unit is run again after losing its worker, node or actors, before that counts as failing


def _interrupted(exc: BaseException) -> bool:
    """A unit that lost its worker, node or actors (the cluster's doing) rather than failed on its own inputs."""
    import ray.exceptions as rx

    from tasks.unit import ActorsGone

    cause = exc.cause if isinstance(exc, rx.RayTaskError) else exc
    system = (rx.WorkerCrashedError, rx.NodeDiedError, rx.ObjectLostError, rx.OwnerDiedError, rx.RayActorError,
              rx.ActorUnavailableError, rx.LocalRayletDiedError, ActorsGone)
    return isinstance(cause, system) or isinstance(exc, system)


def _reason(exc: BaseException) -> tuple[str, str]:
    """The one-line reason of a unit's failure, and the node it ran on."""
    import ray.exceptions as rx

    from tasks.unit import UnitFailed

    cause = exc.cause if isinstance(exc, rx.RayTaskError) else exc
    if isinstance(cause, UnitFailed):
        return str(cause), cause.node
    text = str(cause).strip()
    return (text.splitlines()[-1] if text else type(cause).__name__), ""


def _measured(stats: list[dict]) -> tuple[dict[str, float], float]:
    """Seconds per sample of each model stage and of a unit's own work, from the shards built so far."""
    from tasks.pipeline import MODEL_STAGES

    seconds: dict[str, float] = {}
    samples: dict[str, int] = {}
    for s in stats:
        inputs = {f["stage"]: f["in"] for f in s["funnel"]}
        for stage, spent in s["stage_seconds"].items():
            seconds[stage] = seconds.get(stage, 0.0) + spent
            samples[stage] = samples.get(stage, 0) + inputs.get(stage, 0)
    per = {stage: seconds[stage] / samples[stage] for stage in seconds if samples.get(stage)}
    unit = sum(v for k, v in per.items() if k not in MODEL_STAGES)
    return {k: v for k, v in per.items() if k in MODEL_STAGES and v > 0}, unit


def _run_units(plan: BuildPlan, meta: dict, pools, on_done, on_failed, log) -> bool:
    """Keep the pools' worth of unit tasks running; `on_done(unit, stats)` as each finishes, `on_failed(unit,
    record)` for one that failed every try. A unit that fails is tried again with backoff (runtime.unit_retries); one
    that lost its worker or node is run again with the pools as they are now. Returns False when the build stopped
    early (runtime.max_failed_units failures)."""
    import ray

    from tasks.unit import build_unit

    cfg, r = plan.cfg, plan.cfg.runtime
    limit = r.max_failed_units or max(1, math.ceil(0.01 * len(plan.todo)))
    task = ray.remote(max_retries=0)(build_unit)
    queue: deque = deque(plan.todo)
    delayed: list[tuple[float, object]] = []  # (not before, unit): failed units waiting for their next try
    running: dict = {}  # ref → (unit, generation of the handles it got)
    tries: Counter = Counter()
    lost: Counter = Counter()
    failures, finished = 0, []
    handles, generation = None, -1
    waiting_since: float | None = None
    while queue or running or delayed:
        for line in pools.tick(min((g for _, g in running.values()), default=None)):
            log.warning("%s", line)
        now = time.monotonic()
        for item in [d for d in delayed if d[0] <= now]:
            delayed.remove(item)
            queue.appendleft(item[1])
        if pools.serving():
            waiting_since = None
            if generation != pools.generation:
                handles, generation = ray.put(pools.handles()), pools.generation
            while handles is not None and queue and len(running) < pools.units_in_flight():
                unit = queue.popleft()
                ref = task.options(num_cpus=pools.unit_cpus).remote(unit, str(plan.output), cfg, plan.profile, meta,
                                                                     handles)
                running[ref] = (unit, generation)
        elif queue:
            waiting_since = waiting_since or now
            if now - waiting_since > r.placement_timeout:
                for ref in running:
                    ray.cancel(ref, force=True)
                raise BuildError(pools.unservable(now - waiting_since))
        if not running:
            time.sleep(0.2)
            continue
        ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
        for ref in ready:
            unit, _ = running.pop(ref)
            try:
                stats = ray.get(ref)
            except Exception as exc:  # noqa: BLE001  (classified: the cluster's doing, or the unit's)
                reason, node = _reason(exc)
                if _interrupted(exc) and lost[unit.shard] < INTERRUPTIONS:
                    lost[unit.shard] += 1
                    log.warning("shard %05d lost its worker, node or actors (%s): building it again", unit.shard,
                                reason)
                    queue.appendleft(unit)
                    continue
                tries[unit.shard] += 1
                if tries[unit.shard] <= r.unit_retries:
                    wait = min(60.0, RETRY_BACKOFF * 2 ** (tries[unit.shard] - 1))
                    log.warning("shard %05d (%s) failed, try %d of %d: %s; again in %g s", unit.shard,
                                unit.description, tries[unit.shard], r.unit_retries + 1, reason, wait)
                    delayed.append((now + wait, unit))
                    continue
                failures += 1
                on_failed(unit, {"shard": unit.shard, "description": unit.description, "error": reason,
                                 "attempts": tries[unit.shard], "node": node,
                                 "time": datetime.now(UTC).isoformat(timespec="seconds")})
                if failures >= limit and (queue or delayed or running):
                    for other in running:  # a systematic error must not burn the cluster
                        ray.cancel(other, force=True)
                    return False
                continue
            on_done(unit, stats)
            finished.append(stats)
            if r.rebalance_every and len(finished) % r.rebalance_every == 0:
                line = pools.rebalance(*_measured(finished))
                if line:
                    log.info("%s", line)
    return True


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

    failed: list[dict] = []
    finished = True
    earlier_failures = set(failed_units(plan.output))
    if plan.todo:
        from tasks.actors import StagePools

        with ray_session(plan.cfg.runtime.workers), tqdm(
            total=len(plan.todo), unit="shard", desc="build-dataset", disable=None
        ) as bar:
            pools = StagePools(plan.cfg, profile, logger)
            nodes.update(pools.used_nodes)
            logger.info("model actors ready on %d node(s) of %d: %s", len(pools.used_nodes), len(pools.nodes),
                        pools.describe())
            for note in pools.plan.notes:  # a node whose fixed pools leave no room (runtime.actors too high)
                logger.warning("placement: %s", note)
            asked = pools.ask_autoscaler(len(plan.todo))
            logger.info("asked the autoscaler for up to %d node(s) of %s (runtime.max_nodes caps it)", asked["nodes"],
                        asked["shape"])
            try:
                cfg = plan.cfg
                meta = plan.meta or write_meta(plan.output, cfg.to_dict(), cfg.content_hash(), profile,
                                               cfg.model_ids(profile), pools.describe_clip())
                watch = BuildWatch(plan.todo, pools.sizes)  # rates, ETA, busy fractions

                def on_done(unit, stats: dict) -> None:
                    nonlocal done
                    done += 1
                    nodes.add(stats["node"])
                    nodes.update(pools.used_nodes)
                    if unit.shard in earlier_failures:
                        clear_failure(plan.output, unit.shard)
                    bar.update()
                    logger.info(
                        "shard %05d: %d accepted, %d rejected, %.2f images/s (%d/%d shards)",
                        unit.shard, stats["accepted"], stats["rejected"], stats["images_per_second"] or 0, done, total,
                    )
                    watch.shard_done(unit, stats)
                    rows.append(_row(stats) | watch.busy_columns()
                                | {"actors": ", ".join(f"{k} {v}" for k, v in pools.sizes().items())})
                    publish_table()
                    update_progress_artifact(progress, 100.0 * done / total,  # pyright: ignore[reportArgumentType]
                                             description=watch.describe(done, total))

                def on_failed(unit, record: dict) -> None:
                    failed.append(record)
                    record_failure(plan.output, unit.shard, record)
                    logger.error("shard %05d (%s) failed after %d tries: %s; recorded in %s", unit.shard,
                                 unit.description, record["attempts"], record["error"],
                                 failure_path(plan.output, unit.shard))

                finished = _run_units(plan, meta, pools, on_done, on_failed, logger)
            finally:
                pools.shutdown()
        publish_table(final=True)
    built = set(complete_shards(plan.output)) & {u.shard for u in plan.units}
    all_stats = [read_json(shard_paths(plan.output, u.shard)["stats"]) for u in plan.units if u.shard in built]
    shards = [s["shard"] for s in all_stats]
    sheet = contact_sheet(plan.output, shards, join(plan.output, "contact_sheet.png"))
    markdown = funnel_markdown(all_stats, sheet)
    gallery = gallery_markdown(plan.output, all_stats)
    write_bytes(join(plan.output, "summary.md"), (markdown + (f"\n\n{gallery}" if gallery else "") + "\n").encode())
    create_markdown_artifact(
        markdown=markdown + thumbnail_markdown(sheet) + (f"\n{gallery}\n" if gallery else ""),
        key="build-dataset-summary",
        description="funnel, contact sheet and rejects gallery",
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
    if failed or not finished:
        create_table_artifact(table=failed, key="build-dataset-failed-units",
                              description="units that failed every try: the next run builds only what is missing")
        shown = "; ".join(f"shard {f['shard']:05d} ({f['description']}): {f['error']}" for f in failed[:3])
        more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
        stopped = ("" if finished else
                   f"stopped early at runtime.max_failed_units ({len(failed)} failed), {len(plan.todo) - len(failed)}"
                   " other unit(s) not all built; ")
        raise BuildError(
            f"{stopped}{len(failed)} of {len(plan.todo)} unit(s) failed after {plan.cfg.runtime.unit_retries + 1} "
            f"tries: {shown}{more}; they are recorded in {join(plan.output, FAILED)}; run the same command again "
            f"to build only what is missing ({summary['shards']} of {total} shards complete)")
    logger.info("done: %s", summary)
    return summary
