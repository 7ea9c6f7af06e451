"""build-dataset flow: the control plane. It plans work units from listings (`DIR/manifest.parquet`), hands them to
the build executor (tasks/executor.py: actor pools per model stage, one Ray task per unit that reads, processes and
writes its shard on a worker), and publishes: per-shard stats come back (kilobytes) to the dashboard
(flows/build_dashboard.py: progress, a bounded shard table, the build log), and at the end the funnel, a contact
sheet and the rejects gallery, from running totals. The flow process never touches pixels, and its work per shard
does not grow with the build.

Complete shards are skipped on a rerun; new inputs become new shards. Inputs and output are local paths or fsspec
URLs (`storage/fs.py`) that every Ray worker reads and writes itself.
"""

from __future__ import annotations

import json
from contextlib import nullcontext

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE
from pydantic.json_schema import SkipJsonSchema

from flows.build_dashboard import BuildDashboard
from flows.handed import Handed, plan_of
from lambda_eclipse.errors import BuildError
from lambda_eclipse.ray_session import ray_session
from lambda_eclipse.required import required
from storage.build_totals import BuildTotals
from storage.confine import confine
from storage.dataset_meta import write_meta
from storage.fs import Location, join, name, uri, write_bytes
from storage.layout import FAILED
from storage.manifest import write_manifest
from storage.rejects_gallery import gallery_markdown
from storage.report import contact_sheet, funnel_markdown, thumbnail_markdown
from tasks.actors import alive_nodes
from tasks.copies import find_copies
from tasks.executor import TOTALS_CHUNK, BuildExecutor, Outcome, shard_totals, stage_costs
from tasks.forecast import FORECAST, forecast, forecast_cost_line, forecast_markdown, forecast_vs_actual, read_forecast
from tasks.plan import BuildPlan, prepare_build


@task(name="plan-build", cache_policy=NO_CACHE)
def plan_build(inputs, output, profile, config_file, overrides, ray_cpus, gpus_per_stage, config, reuse,
               sample) -> BuildPlan:
    """A deployment's run (or a direct call) plans from its raw parameters; the CLI hands its plan instead."""
    return prepare_build(inputs, output, profile, config_file, overrides, ray_cpus, gpus_per_stage, config, reuse,
                         sample)


@flow(name="build-dataset")
def build_dataset(
    inputs: list[str],
    output: str,
    profile: str = "tiny",
    config_file: str | None = None,
    overrides: list[str] | None = None,
    ray_cpus: int = 0,
    gpus_per_stage: dict[str, float] | None = None,
    config: dict | None = None,
    reuse: str | None = None,
    sample: float | None = None,
    forecast: str | None = None,
    handed: SkipJsonSchema[Handed | None] = None,
    workers: SkipJsonSchema[int | None] = None,
) -> dict:
    """Build λ-ECLIPSE training shards from image folders or WebDataset tars into `output`.

    `config` is a resolved configuration (as `lambda-eclipse build-dataset` passes it); without it the flow
    resolves `config_file` and `overrides` itself. `reuse`: an earlier dataset whose kept model outputs serve the
    stages whose fingerprints did not change (a re-filter runs only what changed, storage/kept.py). `sample`: build a
    deterministic sample of the inputs (a fraction below 1, else a count) and forecast the whole listing
    (`DIR/forecast.json`); `forecast`: a sample's forecast.json (or its dataset) to show beside this build's numbers
    (by default `reuse`'s, where it has one). `handed`: the plan `lambda-eclipse build-dataset` prepared from these
    parameters (flows/handed.py); without it the flow prepares its own. `workers`: `ray_cpus`'s old name, accepted
    for one release."""
    if workers is not None:
        get_run_logger().warning("the parameter `workers` is deprecated and goes in the next release; pass `ray_cpus` "
                                 "instead")
        ray_cpus = ray_cpus or workers
    confine(inputs=inputs, output=output, config_file=config_file, reuse=reuse, forecast=forecast)
    plan: BuildPlan = plan_of(handed, lambda: plan_build(
        inputs, output, profile, config_file, overrides, ray_cpus, gpus_per_stage, config, reuse, sample))
    return run_build(plan, read_forecast(forecast or reuse, required=forecast is not None))


def hand(plan: BuildPlan) -> Handed:
    """The CLI's plan for the flow, and what its run records of it."""
    return Handed(plan=plan, summary={"config_hash": plan.cfg.content_hash(), "profile": str(plan.profile),
                                      "output": str(plan.output), "units": len(plan.units), "todo": len(plan.todo),
                                      "complete": len(plan.complete), "new": plan.new})


def run_build(plan: BuildPlan, earlier_forecast: dict | None = None) -> dict:
    """Build `plan`, in a build-dataset flow run (it logs to the run and publishes its artifacts); `earlier_forecast`:
    a sample's forecast to show beside the build's numbers."""
    logger = get_run_logger()
    if plan.new:  # before any shard: a rerun, even after a crash, keeps every unit's boundaries
        write_manifest(plan.output, plan.units)
    total = len(plan.units)
    logger.info(plan.summary())
    progress = create_progress_artifact(
        progress=100.0 * len(plan.complete) / total, key="build-dataset-progress", description="shards complete / total"
    )
    earlier = sorted(plan.complete & {u.shard for u in plan.units})
    totals, outcome, nodes = BuildTotals(), Outcome([], finished=True), set()
    outlook = None
    with ray_session(plan.cfg.runtime.ray_cpus) if plan.todo or len(earlier) > TOTALS_CHUNK or plan.sample \
            else nullcontext():
        if plan.todo and plan.cfg.duplicates.max_distance >= 0:
            find_copies(plan.present_units(), plan.todo, plan.complete, plan.output, plan.cfg, logger)
        if plan.todo:
            with BuildExecutor(plan, logger) as executor:
                cfg = plan.cfg
                meta = plan.meta or write_meta(plan.output, cfg.to_dict(), cfg.content_hash(), plan.profile,
                                               cfg.model_ids(plan.profile), executor.describe_clip(), plan.sample_of)
                dashboard = BuildDashboard(plan, progress, logger, executor.sizes)  # pyright: ignore[reportArgumentType]
                try:
                    outcome = executor.run(meta, dashboard.shard_done)
                finally:
                    dashboard.close()
            totals, nodes = dashboard.totals, executor.nodes
        totals.merge(shard_totals(plan.output, earlier))  # the shards of earlier runs, summed on the workers
        if plan.sample is not None and totals.inputs:
            outlook = _publish_forecast(plan, totals, logger)
    summary = _publish_summary(plan.output, totals, earlier_forecast) | {"nodes": len(nodes)}
    if outlook is not None:
        summary["forecast"] = outlook
    if outcome.failed or not outcome.finished:
        failed = outcome.failed
        create_table_artifact(table=failed, key="build-dataset-failed-units",
                              description="units that failed every try: the next run builds only what is missing")
        shown = "; ".join(f"shard {f['shard']:05d} ({f['description']}): {f['error']}" for f in failed[:3])
        more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
        stopped = ("" if outcome.finished else
                   f"stopped early at runtime.max_failed_units ({len(failed)} failed), {len(plan.todo) - len(failed)}"
                   " other unit(s) not all built; ")
        raise BuildError(
            f"{stopped}{len(failed)} of {len(plan.todo)} unit(s) failed after {plan.cfg.runtime.unit_retries + 1} "
            f"tries: {shown}{more}; they are recorded in {join(plan.output, FAILED)}; run the same command again "
            f"to build only what is missing ({summary['shards']} of {total} shards complete)")
    logger.info("done: %s", {k: v for k, v in summary.items() if k != "forecast"})  # the forecast has its own line
    return summary


def _publish_forecast(plan: BuildPlan, totals: BuildTotals, logger) -> dict:
    """A sample's forecast for its whole listing, from its totals and the stage costs its shards measured, on the
    cluster it ran on and the named shapes: DIR/forecast.json, an artifact and a log line."""
    sampled = required(plan.sample, "plan.sample")
    measured, unit_seconds = stage_costs(totals)
    outlook = forecast(totals, sampled.images, measured, unit_seconds, alive_nodes(), plan.cfg,
                       estimated=sampled.estimated)
    write_bytes(join(plan.output, FORECAST), (json.dumps(outlook, indent=1) + "\n").encode())
    create_markdown_artifact(markdown=forecast_markdown(outlook), key="build-dataset-forecast",
                             description="the whole listing's yield and cost, forecast from this sample")
    accepted = outlook["accepted"]
    logger.info("forecast for the whole listing (%s%d images): %d accepted samples (95 %% interval %d–%d), %s; "
                "written to %s", "about " if sampled.estimated else "", sampled.images, accepted["expected"],
                accepted["low"], accepted["high"], forecast_cost_line(outlook), join(plan.output, FORECAST))
    return outlook


def _publish_summary(output: Location, totals: BuildTotals, earlier_forecast: dict | None = None) -> dict:
    """summary.md and the summary artifacts (funnel, contact sheet, rejects gallery, and how a sample's forecast
    held), from the totals and the few shards they name; the summary's numbers."""
    sheet = contact_sheet(output, totals.sheet_shards, join(output, "contact_sheet.png"))
    markdown = funnel_markdown(totals, sheet)
    if earlier_forecast is not None:
        markdown += "\n\n" + forecast_vs_actual(earlier_forecast, totals)
    gallery = gallery_markdown(output, totals)
    write_bytes(join(output, "summary.md"), (markdown + (f"\n\n{gallery}" if gallery else "") + "\n").encode())
    create_markdown_artifact(
        markdown=markdown + thumbnail_markdown(sheet) + (f"\n{gallery}\n" if gallery else ""),
        key="build-dataset-summary",
        description="funnel, contact sheet and rejects gallery",
    )
    if sheet is not None:
        create_link_artifact(link=uri(sheet), link_text=name(sheet), key="build-dataset-contact-sheet")
    return {"output": str(output), "shards": totals.shards, "inputs": totals.inputs, "accepted": totals.accepted,
            "rejected": totals.rejected, "dropped_subjects": totals.dropped_subjects,
            "contact_sheet": str(sheet) if sheet else None}
