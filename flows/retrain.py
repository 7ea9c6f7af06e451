"""retrain flow: the retraining loop, validate-dataset → decontaminate → train-prior → evaluate → promote, as subflows
of one run.

Two deployments run it (prefect.yaml): `retrain-on-new-dataset`, triggered by every completed build-dataset run, trains
a candidate on the new dataset in a new run directory; `retrain-nightly` continues the current prior for
`train.steps_per_run` more steps on its dataset. The candidate is recorded in the prior registry (prior/registry.py),
evaluated on a DreamBench subset, and promoted to `current` when every metric is at least the current prior's minus
`tolerance`; the decision, metric by metric, is the markdown artifact `retrain-promotion`. An invalid dataset fails
the run at validation: nothing is trained.

Before training, the dataset is checked for leaks of the evaluation set (`benchmark_data`): the decontaminate flow marks
the samples that match a benchmark image (the `leaks` mark set, which train-prior skips by default), unless the set
already checked every shard as it is against that benchmark. The record carries the training run's provenance (the
shards read, the marked samples skipped, the leak check) and `leak_flag`, set when the prior may have trained on the
benchmark's images (no check, leaks trained on with data.skip_leaks=false, …: prior/registry.py's `leak_flag`); the
flag is logged as a warning and shown in the promotion artifact and `priors list`.

Training and evaluation each hold LAMBDA_ECLIPSE_GPU_SLOTS slots of the `gpu` global concurrency limit while they
run (0, the default outside a deployment: no slot); validation and the decision take none.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event
from prefect.runtime import flow_run

from evaluation.leaks import current_check
from flows.decontaminate import decontaminate
from flows.evaluate import evaluate
from flows.train_prior import train_prior
from flows.validate_dataset import validate_dataset
from lambda_eclipse.errors import UserError
from prior.config import load_train_config
from prior.registry import (
    METRICS,
    Registry,
    dataset_identity,
    decide,
    decision_markdown,
    leak_flag,
    now,
    training_key,
)
from storage.confine import confine
from storage.fs import join

EVENT = "lambda-eclipse.prior.promoted"
BENCHMARK = "dreambench"


@contextmanager
def gpu_slots(what: str) -> Iterator[None]:
    """Hold LAMBDA_ECLIPSE_GPU_SLOTS slots of the global concurrency limit LAMBDA_ECLIPSE_GPU_LIMIT (default `gpu`)."""
    slots = int(os.environ.get("LAMBDA_ECLIPSE_GPU_SLOTS", "0"))
    if slots == 0:
        yield
        return
    from prefect import get_client
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectNotFound

    limit = os.environ.get("LAMBDA_ECLIPSE_GPU_LIMIT", "gpu")
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(limit)
        except ObjectNotFound:
            raise UserError(f"the global concurrency limit {limit!r} does not exist: create it with "
                            f"`prefect gcl create {limit} --limit N` (N = the GPUs of the cluster)") from None
    logger = get_run_logger()
    logger.info("%s: waiting for %d slot(s) of %r", what, slots, limit)
    # the lease is renewed while this process lives; a killed run's slots come back about a minute later
    with concurrency(limit, occupy=slots, strict=True, lease_duration=60):
        logger.info("%s: holding %d slot(s) of %r", what, slots, limit)
        yield


def scores(summary: list[dict]) -> dict[str, float]:
    """Each metric's mean over the evaluated prompts (the summary's groups weighted by their prompts)."""
    prompts = sum(row["prompts"] for row in summary)
    if not prompts:
        raise UserError("the evaluation scored no prompt: check the benchmark data and evaluate.max_prompts")
    return {m: round(sum(row[m] * row["prompts"] for row in summary) / prompts, 4) for m in METRICS}


def _evaluate(prior: str, settings: dict, output: str) -> dict:
    with gpu_slots("evaluate"):
        result = evaluate(benchmark=settings["benchmark"], data=settings["data"], prior=prior, output=output,
                          profile=settings["profile"], config_file=None, overrides=settings["overrides"])
    return {"metrics": scores(result["summary"]), "evaluation": {"settings": settings, "output": output}}


def _check_leaks(data: str, benchmark: str) -> None:
    """Mark the dataset's samples that match the benchmark's images (the decontaminate flow), unless the `leaks` mark
    set already checked every shard as it is now against this benchmark."""
    logger = get_run_logger()
    check = current_check(data, benchmark)
    if check is not None:
        logger.info("leak check: %s was checked against %s at %s (%d samples marked), every shard as it is now",
                    data, benchmark, check.get("checked_at"), check.get("marked", 0))
        return
    found = decontaminate(data=data, against=benchmark)
    logger.log(logging.WARNING if found["matches"] else logging.INFO, "leak check: %s", found["line"])


DEAD = {"FAILED", "CRASHED", "CANCELLED"}  # a claim held by a run in one of these states is taken over


def _state_of(flow_run_id: str | None) -> str | None:
    """The state type of a flow run (RUNNING, COMPLETED, …), None when the API does not know it."""
    if not flow_run_id:
        return None
    from uuid import UUID

    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            state = client.read_flow_run(UUID(flow_run_id)).state
        except ObjectNotFound:
            return None
    return state.type.value if state else None


def _defer(reg: Registry, key: str, holder: dict, me: dict) -> dict | None:
    """Another run claimed this candidate: the result of deferring to it, or None when that run failed without
    training it (this run takes the claim over and trains)."""
    logger = get_run_logger()
    state = _state_of(holder.get("flow_run_id"))
    record = next((r for r in reg.records() if r["run"] == holder["run"]), None)
    trained = bool(record and record.get("metrics"))
    if not trained and (state is None or state in DEAD):
        logger.warning("retrain run %s claimed this candidate (%s) but is %s: this run trains it", holder["flow_run"],
                       key, (state or "unknown to this Prefect API").lower())
        holder = reg.claim(key, me, replace=True)
        if holder["flow_run_id"] == me["flow_run_id"]:
            return None
        state = _state_of(holder.get("flow_run_id"))
    doing = "already trained" if trained else "being trained"
    reason = (f"deferred: dataset {holder['data']} with this training config is {doing} by retrain run "
              f"{holder['flow_run']} (flow run {holder['flow_run_id']}, {(state or 'unknown').lower()}), candidate "
              f"{holder['run']}; this run trains nothing")
    logger.info("%s", reason)
    return {"run": holder["run"], "final": record["final"] if record else None,
            "steps": record["steps"] if record else None, "metrics": record.get("metrics") if record else None,
            "current_metrics": None, "promoted": False, "reason": reason, "deferred_to": holder["flow_run"]}


@flow(name="retrain")
def retrain(
    runs: str,
    benchmark_data: str,
    data: str | None = None,
    profile: str | None = None,
    overrides: list[str] | None = None,
    continue_current: bool = False,
    check_dataset: bool = True,
    check_leaks: bool = True,
    eval_overrides: list[str] | None = None,
    tolerance: float = 0.0,
    registry: str | None = None,
) -> dict:
    """Train a candidate prior into RUNS/prior-<this run's name>, evaluate it on BENCHMARK_DATA and promote it if it
    is no worse than the current prior (minus `tolerance`). `data`: the dataset; with `continue_current`, the current
    prior's (when not given), and training starts from the current prior's last state. `check_leaks`: mark the
    dataset's leaks of BENCHMARK_DATA before training (false: the prior is trained as the dataset's marks stand, and
    flagged when they do not cover BENCHMARK_DATA)."""
    logger = get_run_logger()
    confine(runs=runs, benchmark_data=benchmark_data, data=data, registry=registry)
    reg = Registry.open(registry)
    current = reg.current()
    started_from = None
    if continue_current:
        if current is None:
            raise UserError(f"continue_current: the prior registry {reg.root} has no current prior to continue; "
                            "train one on a dataset first (retrain with data=DATASET)")
        started_from, data = current["run"], data or current["data"]
    if data is None:
        raise UserError("data: give the dataset to train on, or continue_current=true to continue the current prior")
    # Exactly one run per candidate: an event delivered twice, or a duplicate trigger, defers to the run that trains it.
    key = training_key(dataset_identity(data), profile, load_train_config(None, overrides or []).to_dict(),
                       started_from)
    me = {"run": f"prior-{flow_run.get_name()}", "flow_run": flow_run.get_name(), "flow_run_id": flow_run.get_id(),
          "data": data}
    holder = reg.claim(key, me)
    if holder["flow_run_id"] != me["flow_run_id"]:  # a retried run holds its own claim and resumes
        deferred = _defer(reg, key, holder, me)
        if deferred is not None:
            return deferred
    if check_dataset:
        validate_dataset(data)  # an invalid dataset fails this run here, before any training
    if check_leaks:
        _check_leaks(data, benchmark_data)  # marks what the loader then skips (data.skip_leaks)
    output = str(join(runs, f"prior-{flow_run.get_name()}"))
    # a retried run continues its own run directory (resume); init_from starts a new one from the current prior
    init_from = current["run_dir"] if started_from and current else None
    with gpu_slots("train-prior"):
        summary = train_prior(data, output, profile, None, overrides or [], True, init_from=init_from)
    run = output.rstrip("/").rsplit("/", 1)[-1]
    provenance = summary.get("provenance")
    flag = leak_flag(provenance, benchmark_data, reg.get(started_from) if started_from else None)
    if flag:
        logger.warning("LEAK: %s may have trained on images of the benchmark %s: %s", run, benchmark_data, flag)
    record = reg.put({
        "run": run, "run_dir": output, "final": summary["final"], "data": data,
        "dataset_hash": summary["dataset_hash"], "profile": summary["profile"], "steps": summary["step"],
        "train_metrics": summary["metrics"], "started_from": started_from,
        "training": {key: summary.get(key) for key in ("loss", "batch", "edge")},  # prior/job.py's training_record
        "trained_at": now(), "flow_run": flow_run.get_name(), "metrics": None, "evaluation": None,
        "provenance": provenance, "leak_flag": flag,
    })
    # profile None: train-prior's choice from the dataset, which the evaluation then uses too
    settings = {"benchmark": BENCHMARK, "data": benchmark_data, "profile": record["profile"],
                "overrides": eval_overrides or []}
    record = reg.put(record | _evaluate(record["final"], settings, str(join(output, "evaluation"))))
    baseline = None
    if current is not None:
        baseline = current["metrics"]
        if (current.get("evaluation") or {}).get("settings") != settings:  # scores are only comparable like for like
            logger.info("current prior %s was evaluated otherwise: evaluating it with this run's settings",
                        current["run"])
            baseline = _evaluate(current["final"], settings, str(join(output, f"evaluation-{current['run']}")))[
                "metrics"]
    decision = decide(record["metrics"], baseline, tolerance)
    compared = current | {"metrics": baseline} if current else None
    create_markdown_artifact(markdown=decision_markdown(decision, record, compared, tolerance), key="retrain-promotion",
                             description=f"candidate {record['run']} against the current prior")
    logger.info("%s: %s", record["run"], decision.reason)
    if decision.promote:
        reg.promote(record["run"], by=f"retrain flow run {flow_run.get_name()}", reason=decision.reason)
        emit_event(event=EVENT, resource={"prefect.resource.id": f"lambda-eclipse.prior.{record['run']}"},
                   payload={"run": record["run"], "final": record["final"], "metrics": record["metrics"]})
    return {"run": record["run"], "final": record["final"], "steps": record["steps"], "metrics": record["metrics"],
            "current_metrics": baseline, "promoted": decision.promote, "reason": decision.reason, "deferred_to": None,
            "leak_flag": flag}
