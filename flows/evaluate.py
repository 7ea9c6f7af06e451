"""evaluate flow: DreamBench / Multibench prompts → images → DINO, CLIP-I, CLIP-T (evaluation/run.py).

The models load in `evaluate.actors` Ray actors that ask for GPUs (lambda_eclipse/actor_pool; `runtime.gpus`), so on a
cluster they run on GPU nodes; this process plans, dispatches prompts to them and writes what they return. One Prefect
task per group of prompts (a DreamBench subject's 25 prompts, or one Multibench template's subject combinations), its
prompts spread over the actors. Finished prompts are skipped, so a rerun — or a task retry — continues where the
evaluation stopped; seeds follow a prompt's place in the benchmark, so any number of actors gives the same numbers.
Published: a progress artifact, a table artifact of per-prompt scores as they come, and at the end the summary as a
table and a markdown artifact (the paper's reported Table 2 / Table 4 rows next to this run's).
"""

from __future__ import annotations

from collections import Counter
from functools import partial
from itertools import groupby

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from pydantic.json_schema import SkipJsonSchema

from evaluation.benchmarks import BenchPrompt
from evaluation.run import EvalPlan, Evaluator, finish, prepare_evaluation, record, score, start
from flows.handed import Handed, config_hash, plan_of
from generate.requests import Job
from lambda_eclipse.actor_pool import ActorPool, model_pool
from lambda_eclipse.errors import WorkerError
from prior.registry import resolve_prior
from storage.confine import confine


def group_of(prompt: BenchPrompt) -> str:
    """dreambench "dog/07" → "dog"; multibench "2/00/dog+hat" → "2/00"."""
    return prompt.id.rsplit("/", 1)[0]


@task(name="evaluate-prompts", cache_policy=NO_CACHE, retries=1)
def evaluate_group(pool: ActorPool, plan: EvalPlan, items: list[tuple[BenchPrompt, Job]]) -> list[tuple[dict, int]]:
    """Score the group's prompts on the pool's actors, writing each as it comes back: (row, actor index) each."""
    done = {row["id"] for row in plan.results().read()}  # a retry skips what its failed try finished
    items = [(p, j) for p, j in items if p.id not in done]
    rows = []
    for i, (row, images), actor in pool.map(score, items, lambda i: f"scoring prompt {items[i][0].id}"):
        record(plan, items[i][0], row, images)
        rows.append((row, actor))
    return rows


def _dtype(pool: ActorPool) -> str:
    dtypes = {w["dtype"] for w in pool.locations()}
    if len(dtypes) != 1:
        raise WorkerError(f"evaluate actors run in different dtypes ({', '.join(sorted(dtypes))}); set runtime.dtype "
                          "(and runtime.device) so that every actor computes alike")
    return dtypes.pop()


@flow(name="evaluate")
def evaluate(
    benchmark: str,
    data: str,
    prior: str | None,
    output: str,
    profile: str | None = None,
    config_file: str | None = None,
    overrides: list[str] | None = None,
    decoder: str | None = None,
    handed: SkipJsonSchema[Handed | None] = None,
) -> dict:
    """Evaluate the prior in `prior` (None: the prior registry's current prior) on `benchmark` (dreambench |
    multibench) with the subjects in `data`.

    `profile` None: the prior checkpoint's own. `decoder`: a fine-tuned decoder directory (finetune-decoder's).
    `handed`: the plan `lambda-eclipse evaluate` prepared from these parameters (flows/handed.py); without it the flow
    prepares its own."""
    prior = resolve_prior(prior)
    confine(data=data, prior=prior, output=output, config_file=config_file, decoder=decoder)
    plan: EvalPlan = plan_of(handed, lambda: prepare_evaluation(
        benchmark, data, prior, output, profile, config_file, overrides, decoder))
    e = plan.cfg.evaluate
    confine(canny_from=e.canny_from or None, multibench_files=e.multibench_files or None)  # paths in the config
    return run_evaluation(plan)


def hand(plan: EvalPlan) -> Handed:
    """The CLI's plan for the flow, and what its run records of it."""
    g = plan.generate
    return Handed(plan=plan, summary={"config_hash": config_hash(plan.cfg), "profile": str(g.profile),
                                      "output": str(plan.output), "prompts": len(plan.prompts), "total": plan.total,
                                      "prior_sha256": g.prior.sha256[:16],
                                      "decoder_sha256": g.decoder.sha256[:16] if g.decoder else None})


def run_evaluation(plan: EvalPlan) -> dict:
    """Evaluate `plan`, in an evaluate flow run (it logs to the run and publishes its artifacts)."""
    logger = get_run_logger()
    benchmark, e = plan.benchmark, plan.cfg.evaluate
    todo = plan.todo()
    for warning in plan.generate.warnings:
        logger.warning(warning)
    logger.info("%s: %d of %d prompts in this run, %d already done, %d images per prompt, %s profile; DINO: %s; "
                "CLIP-I/CLIP-T: %s", benchmark, len(plan.prompts), plan.total, len(plan.prompts) - len(todo),
                e.images_per_prompt, plan.generate.profile, plan.encoders["dino"], plan.encoders["clip"])
    progress = create_progress_artifact(progress=100.0 * (len(plan.prompts) - len(todo)) / len(plan.prompts),
                                        key=f"evaluate-{benchmark}-progress", description="prompts done / total")
    served: Counter = Counter()
    where: list[dict] = []
    if todo:
        actors = min(e.actors, len(todo))
        with model_pool("evaluate", partial(Evaluator, plan), plan.cfg.runtime, actors, logger) as pool:
            where = pool.locations()
            start(plan, _dtype(pool))
            rows = []
            for group, items in groupby(todo, key=lambda item: group_of(item[0])):
                scored = evaluate_group(pool, plan, list(items))
                rows += [row for row, _ in scored]
                served.update(actor for _, actor in scored)
                done = len(plan.prompts) - len(todo) + len(rows)
                logger.info("%s done (%d/%d prompts)", group, done, len(plan.prompts))
                # prefect's async_dispatch types the sync call's result as UUID | Coroutine; in a sync flow it is the
                # UUID
                update_progress_artifact(progress, 100.0 * done / len(plan.prompts))  # pyright: ignore[reportArgumentType]
                create_table_artifact(table=rows, key=f"evaluate-{benchmark}-prompts",
                                      description="DINO, CLIP-I, CLIP-T per prompt evaluated by this run")
    result = finish(plan)
    create_table_artifact(table=result["summary"], key=f"evaluate-{benchmark}-summary",
                          description="mean DINO, CLIP-I, CLIP-T per group (paper Table 2 / Table 4)")
    create_markdown_artifact(markdown=result["markdown"], key=f"evaluate-{benchmark}-report",
                             description="this run against the paper's reported λ-ECLIPSE rows")
    logger.info("done: %s", result["summary"])
    return result | {"actors": [w | {"prompts": served[i]} for i, w in enumerate(where)]}
