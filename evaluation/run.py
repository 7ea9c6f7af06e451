"""An evaluation run: checked up front, resumable, scored prompt by prompt.

OUTPUT/
  evaluation.json      what decides the numbers (benchmark, data, profile, prior sha256, protocol, models); a rerun
                       into the same OUTPUT continues only if it matches
  images/<prompt id>/K.png  the generated images (K = 0 … images_per_prompt − 1)
  per_prompt.csv       one row per finished prompt: DINO, CLIP-I, CLIP-T (results.py)
  summary.md, summary.json  the means per group, as the paper's Table 2 / Table 4 rows

Prompt i of the benchmark (its index in the full list, whatever max_prompts is) renders image k with seed
evaluate.seed + i · images_per_prompt + k, so an interrupted run that continues, and a longer run, give the same
numbers as one uninterrupted run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from evaluation.benchmarks import GROUPS, BenchPrompt, BenchSubject, benchmark_prompts, load_benchmarks
from evaluation.config import EvalConfig, load_eval_config
from evaluation.metrics import subjects_similarity, text_similarity
from evaluation.results import Results, summarize, summary_markdown
from generate.plan import GeneratePlan, available, prepare
from generate.requests import GenerateRequest, Job
from generate.subjects import SubjectSpec, read_image
from lambda_eclipse.errors import UserError
from storage.layout import read_json, write_json_atomic

RUN, RESULTS, IMAGES = "evaluation.json", "per_prompt.csv", "images"
SUMMARY_MD, SUMMARY_JSON = "summary.md", "summary.json"
TITLES = {"dreambench": "DreamBench (paper Table 2)", "multibench": "Multibench (paper Table 4)"}


@dataclass
class EvalPlan:
    benchmark: str
    data: str
    cfg: EvalConfig
    prompts: list[BenchPrompt]  # this run's, in order (the first max_prompts)
    total: int  # prompts in the whole benchmark
    generate: GeneratePlan  # its jobs are the prompts', in the same order
    identity: dict

    @property
    def output(self) -> Path:
        return self.generate.output

    def results(self) -> Results:
        return Results(self.output / RESULTS)

    def todo(self) -> list[tuple[BenchPrompt, Job]]:
        done = {row["id"] for row in self.results().read()}
        return [(p, j) for p, j in zip(self.prompts, self.generate.jobs) if p.id not in done]


def _identity(benchmark: str, data: str, profile: str, cfg: EvalConfig, plan: GeneratePlan) -> dict:
    """Everything that decides the numbers, as flat keys (so that a mismatch names the key)."""
    protocol = asdict(cfg.evaluate)
    protocol.pop("max_prompts")  # a longer or shorter run continues the same evaluation
    _, dtype = cfg.runtime.resolve()
    models = {f"models.{k}": v for k, v in asdict(cfg.models).items()} if profile == "paper" else {}
    return {"benchmark": benchmark, "data": str(Path(data).resolve()), "profile": profile,
            "prior_sha256": plan.prior.sha256, "dtype": str(dtype).removeprefix("torch.")} | {
        f"evaluate.{k}": v for k, v in protocol.items()} | models


def _check_resume(output: Path, identity: dict) -> None:
    path = output / RUN
    if not path.is_file():
        return
    saved = read_json(path)
    differ = [f"{k} ({saved.get(k)!r} then, {v!r} now)" for k, v in identity.items() if saved.get(k) != v]
    if differ:
        raise UserError(f"{output} holds another evaluation: {'; '.join(differ)}; use a new --output to start "
                        "afresh, or rerun with the earlier settings to continue it")


def prepare_evaluation(benchmark: str, data: str, prior: str, output: str, profile: str = "tiny",
                       config_file: str | None = None, overrides: list[str] | None = None) -> EvalPlan:
    """Check the benchmark, data folder, config, weights, prior and output before anything loads."""
    cfg = load_eval_config(config_file, overrides or [])
    e = cfg.evaluate
    every = benchmark_prompts(benchmark, data, load_benchmarks(e.benchmarks))
    prompts = every[: e.max_prompts or None]
    used = {s.name: s for p in prompts for s in p.subjects}
    for subject in used.values():
        if e.reference_image >= len(subject.photos):
            raise UserError(f"evaluate.reference_image={e.reference_image}, but subject {subject.name} has "
                            f"{len(subject.photos)} photo(s)")
        for photo in subject.photos:  # every photo is a real image of the metrics
            read_image(photo, f"subject {subject.name}")
    requests = [
        GenerateRequest(p.prompt, [SubjectSpec(s.word, s.photos[e.reference_image]) for s in p.subjects],
                        seed=e.seed + p.index * e.images_per_prompt, num_images=e.images_per_prompt,
                        spans=list(p.spans), where=f"prompt {p.id}")
        for p in prompts
    ]
    dino_missing = [] if profile != "paper" or available(cfg.models.dino, "config.json") else [
        f"DINO ViT-S/16 models.dino={cfg.models.dino}"]
    size = e.size or None
    plan = prepare(requests, prior, output, profile, cfg, e.steps, e.guidance, size, size, e.segment, dino_missing)
    identity = _identity(benchmark, data, profile, cfg, plan)
    _check_resume(plan.output, identity)
    return EvalPlan(benchmark, str(data), cfg, prompts, len(every), plan, identity)


class Evaluator:
    """The generator and the metric models, loaded once; real-image embeddings computed once per subject."""

    def __init__(self, plan: EvalPlan):
        from generate.pipeline import Generator
        from lambda_eclipse.models.dino import load_dino

        g = plan.generate
        self.plan = plan
        self.generator = Generator(g.profile, g.cfg, g.prior, g.segment)
        self.dino = load_dino(g.profile, plan.cfg.models.dino, self.generator.device, self.generator.dtype)
        self._real: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def real(self, subject: BenchSubject) -> tuple[np.ndarray, np.ndarray]:
        """(DINO, CLIP) embeddings of the subject's photos, as they are (DreamBooth scores against the real images)."""
        if subject.name not in self._real:
            photos = [read_image(p, f"subject {subject.name}") for p in subject.photos]
            self._real[subject.name] = (self.dino.encode_images(photos), self.generator.clip.encode_images(photos))
        return self._real[subject.name]

    def evaluate(self, prompt: BenchPrompt, job: Job) -> dict:
        """Generate the prompt's images, write them, and score them: its CSV row."""
        g = self.plan.generate
        images = self.generator.generate(job, g.settings)
        folder = g.output / IMAGES / prompt.id
        folder.mkdir(parents=True, exist_ok=True)
        for k, image in enumerate(images):
            Image.fromarray(image).save(folder / f"{k}.png")
        dino, clip = self.dino.encode_images(images), self.generator.clip.encode_images(images)
        reals = [self.real(s) for s in prompt.subjects]
        text = self.generator.clip.encode_text([prompt.prompt])[1][0]
        return {
            "id": prompt.id, "group": prompt.group, "prompt": prompt.prompt,
            "subjects": "+".join(s.name for s in prompt.subjects), "seed": job.seed, "images": len(images),
            "dino": round(subjects_similarity(dino, [r[0] for r in reals]), 6),
            "clip_i": round(subjects_similarity(clip, [r[1] for r in reals]), 6),
            "clip_t": round(text_similarity(clip, text), 6),
        }


def start(plan: EvalPlan) -> None:
    """Record what this evaluation is (a resumed run has checked it matches)."""
    write_json_atomic(plan.output / RUN, plan.identity)


def evaluate_prompts(evaluator: Evaluator, todo: list[tuple[BenchPrompt, Job]]) -> list[dict]:
    results = evaluator.plan.results()
    rows = []
    for prompt, job in todo:
        row = evaluator.evaluate(prompt, job)
        results.append(row)
        rows.append(row)
    return rows


def finish(plan: EvalPlan) -> dict:
    """The summary of every finished prompt of this run, written as summary.md and summary.json."""
    ids = {p.id for p in plan.prompts}
    rows = [r for r in plan.results().read() if r["id"] in ids]
    summary = summarize(rows, GROUPS[plan.benchmark])
    g = plan.generate
    note = (f"{plan.cfg.evaluate.images_per_prompt} images per prompt, {g.settings.steps} DDIM steps, guidance "
            f"{g.settings.guidance}, {g.settings.width}×{g.settings.height} px, {g.profile} profile, prior "
            f"`{g.prior.path}` (sha256 `{g.prior.sha256[:16]}…`).")
    markdown = summary_markdown(f"{TITLES[plan.benchmark]}", summary, len(plan.prompts), note)
    (plan.output / SUMMARY_MD).write_text(markdown + "\n")
    result = {"benchmark": plan.benchmark, "prompts": len(plan.prompts), "evaluated": len(rows), "summary": summary,
              "output": str(plan.output)}
    write_json_atomic(plan.output / SUMMARY_JSON, result | {"identity": plan.identity})
    return result | {"markdown": markdown}
