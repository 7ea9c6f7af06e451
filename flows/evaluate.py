"""evaluate flow: DreamBench / Multibench prompts → images → DINO, CLIP-I, CLIP-T (evaluation/run.py).

The models load once; one Prefect task per group of prompts (a DreamBench subject's 25 prompts, or one Multibench
template's subject combinations). Finished prompts are skipped, so a rerun — or a task retry — continues where the
evaluation stopped. Published: a progress artifact, a table artifact of per-prompt scores as they come, and at the
end the summary as a table and a markdown artifact (the paper's Table 2 / Table 4 rows next to this run's).
"""

from __future__ import annotations

from itertools import groupby

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from evaluation.benchmarks import BenchPrompt
from evaluation.run import EvalPlan, Evaluator, evaluate_prompts, finish, prepare_evaluation, start
from generate.requests import Job
from prior.registry import resolve_prior
from storage.confine import confine


def group_of(prompt: BenchPrompt) -> str:
    """dreambench "dog/07" → "dog"; multibench "2/00/dog+hat" → "2/00"."""
    return prompt.id.rsplit("/", 1)[0]


@task(name="load-models", cache_policy=NO_CACHE)
def load_models(plan: EvalPlan) -> Evaluator:
    return Evaluator(plan)


@task(name="evaluate-prompts", cache_policy=NO_CACHE, retries=1)
def evaluate_group(evaluator: Evaluator, items: list[tuple[BenchPrompt, Job]]) -> list[dict]:
    done = {row["id"] for row in evaluator.plan.results().read()}  # a retry skips what its failed try finished
    return evaluate_prompts(evaluator, [(p, j) for p, j in items if p.id not in done])


@flow(name="evaluate")
def evaluate(
    benchmark: str,
    data: str,
    prior: str | None,
    output: str,
    profile: str = "tiny",
    config_file: str | None = None,
    overrides: list[str] | None = None,
) -> dict:
    """Evaluate the prior in `prior` (None: the prior registry's current prior) on `benchmark` (dreambench |
    multibench) with the subjects in `data`."""
    logger = get_run_logger()
    prior = resolve_prior(prior)
    confine(data=data, prior=prior, output=output, config_file=config_file)
    plan = prepare_evaluation(benchmark, data, prior, output, profile, config_file, overrides)
    todo = plan.todo()
    for warning in plan.generate.warnings:
        logger.warning(warning)
    logger.info("%s: %d of %d prompts in this run, %d already done, %d images per prompt, %s profile", benchmark,
                len(plan.prompts), plan.total, len(plan.prompts) - len(todo), plan.cfg.evaluate.images_per_prompt,
                profile)
    start(plan)
    progress = create_progress_artifact(progress=100.0 * (len(plan.prompts) - len(todo)) / len(plan.prompts),
                                        key=f"evaluate-{benchmark}-progress", description="prompts done / total")
    if todo:
        evaluator = load_models(plan)
        rows = []
        for group, items in groupby(todo, key=lambda item: group_of(item[0])):
            rows += evaluate_group(evaluator, list(items))
            done = len(plan.prompts) - len(todo) + len(rows)
            logger.info("%s done (%d/%d prompts)", group, done, len(plan.prompts))
            # prefect's async_dispatch types the sync call's result as UUID | Coroutine; in a sync flow it is the UUID
            update_progress_artifact(progress, 100.0 * done / len(plan.prompts))  # pyright: ignore[reportArgumentType]
            create_table_artifact(table=rows, key=f"evaluate-{benchmark}-prompts",
                                  description="DINO, CLIP-I, CLIP-T per prompt evaluated by this run")
    result = finish(plan)
    create_table_artifact(table=result["summary"], key=f"evaluate-{benchmark}-summary",
                          description="mean DINO, CLIP-I, CLIP-T per group (paper Table 2 / Table 4)")
    create_markdown_artifact(markdown=result["markdown"], key=f"evaluate-{benchmark}-report",
                             description="this run against the paper's λ-ECLIPSE rows")
    logger.info("done: %s", result["summary"])
    return result
