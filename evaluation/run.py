"""An evaluation run: checked up front, resumable, scored prompt by prompt.

OUTPUT/
  evaluation.json      what decides the numbers (benchmark, data, profile, prior and decoder sha256, protocol, models,
                       the actors' dtype); a rerun into the same OUTPUT continues only if it matches
  images/<prompt id>/K.png  the generated images (K = 0 … images_per_prompt − 1)
  per_prompt.csv       one row per finished prompt: DINO, CLIP-I, CLIP-T, segmentation, decoder (results.py); in
                       benchmark order once the run finishes
  summary.md, summary.json  the means per group next to the paper's reported rows, the encoders that scored them,
                       and the subjects whose reference photo segmentation found no box in

With evaluate.canny_from=DIR (Table 5's protocol: the paper made DIR's images with Stable Diffusion v1.5 from the
DreamBench prompts, uncustomised) prompt ID's images are controlled by the Canny edge map of DIR/ID.<png|jpg|…>, made
as generate --canny makes it for the prior in use; the summary then compares with Table 5's row.

Prompt i of the benchmark (its index in the full list, whatever max_prompts is) renders image k with seed
evaluate.seed + i · images_per_prompt + k, so an interrupted run that continues, a longer run, and a run spread over
any number of actors give the same numbers as one uninterrupted run on one actor.

The models load in Ray actors (`Evaluator`, lambda_eclipse/actor_pool.py); `score` runs there and returns a prompt's
row and images, `record` writes them in the flow process.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from evaluation.benchmarks import GROUPS, BenchPrompt, BenchSubject, benchmark_prompts, load_benchmarks
from evaluation.config import EvalConfig, load_eval_config
from evaluation.encoders import CONDITIONING, check_clip_model, clip_source, describe, load_eval_clip
from evaluation.metrics import subjects_similarity, text_similarity
from evaluation.results import PAPER, PAPER_CANNY, Results, segmentation_failures, summarize, summary_markdown
from generate.plan import GeneratePlan, available, prepare
from generate.prior_checkpoint import profile_of
from generate.requests import GenerateRequest, Job
from generate.subjects import NO_BOX, SubjectSpec, read_image
from lambda_eclipse.errors import UserError
from lambda_eclipse.profile import Profile
from storage.confine import confine_files
from storage.layout import read_json, write_json_atomic
from tasks.config import InputSection

RUN, RESULTS, IMAGES = "evaluation.json", "per_prompt.csv", "images"
SUMMARY_MD, SUMMARY_JSON = "summary.md", "summary.json"
TITLES = {"dreambench": "DreamBench (paper Table 2)", "multibench": "Multibench (paper Table 4)"}
CANNY_TITLES = {"dreambench": "DreamBench with Canny edge control (paper Table 5)",
                "multibench": "Multibench with Canny edge control (not in the paper)"}


@dataclass
class EvalPlan:
    benchmark: str
    data: str
    cfg: EvalConfig
    prompts: list[BenchPrompt]  # this run's, in order (the first max_prompts)
    total: int  # prompts in the whole benchmark
    generate: GeneratePlan  # its jobs are the prompts', in the same order
    identity: dict
    encoders: dict[str, str] = field(default_factory=dict)  # what scores DINO and CLIP-I/-T (encoders.describe)

    @property
    def output(self) -> Path:
        return self.generate.output

    def results(self) -> Results:
        return Results(self.output / RESULTS)

    def todo(self) -> list[tuple[BenchPrompt, Job]]:
        done = {row["id"] for row in self.results().read()}
        return [(p, j) for p, j in zip(self.prompts, self.generate.jobs) if p.id not in done]


def decoder_name(plan: GeneratePlan) -> str:
    """The decoder in the CSV and summary: "base", or the fine-tuned UNet's sha256 prefix."""
    return f"fine-tuned {plan.decoder.sha256[:16]}" if plan.decoder else "base"


def _identity(benchmark: str, data: str, profile: str, cfg: EvalConfig, plan: GeneratePlan) -> dict:
    """Everything that decides the numbers, as flat keys (so that a mismatch names the key). The dtype is added when
    the actors have resolved it (`start`)."""
    protocol = asdict(cfg.evaluate)
    for placement in ("max_prompts", "actors"):  # a longer, shorter or wider run continues the same evaluation
        protocol.pop(placement)
    profile = Profile.parse(profile)
    models = {f"models.{k}": v for k, v in asdict(cfg.models).items()} if profile.pretrained else {}
    return {"benchmark": benchmark, "data": str(Path(data).resolve()), "profile": profile.value,
            "prior_sha256": plan.prior.sha256, "decoder_sha256": plan.decoder.sha256 if plan.decoder else None} | {
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


def canny_images(prompts: list[BenchPrompt], folder: str) -> dict[str, str]:
    """Each prompt's reference image for its edge map, DIR/<prompt id>.<ext>; a UserError naming those missing."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"--canny-from {folder} is not a directory; it must hold one image per prompt, "
                        "DIR/<prompt id>.png (DreamBench: DIR/dog/03.png)")
    extensions = InputSection().extensions
    found, missing = {}, []
    for prompt in prompts:
        images = [root / f"{prompt.id}{ext}" for ext in extensions if (root / f"{prompt.id}{ext}").is_file()]
        if images:
            found[prompt.id] = str(images[0])
        else:
            missing.append(f"{prompt.id}.png")
    if missing:
        raise UserError(f"--canny-from {folder}: no image for {len(missing)} of {len(prompts)} prompts, e.g. "
                        f"{', '.join(missing[:3])} (any of {', '.join(extensions)})")
    return found


def prepare_evaluation(benchmark: str, data: str, prior: str, output: str, profile: str | None = None,
                       config_file: str | None = None, overrides: list[str] | None = None,
                       decoder: str | None = None) -> EvalPlan:
    """Check the benchmark, data folder, config, weights, prior, decoder and output before anything loads.
    `profile` None: the prior checkpoint's own."""
    cfg = load_eval_config(config_file, overrides or [])
    e = cfg.evaluate
    profile = Profile.parse(profile or profile_of(prior))
    check_clip_model(profile, cfg)
    every = benchmark_prompts(benchmark, data, load_benchmarks(e.benchmarks), e.multibench_files)
    prompts = every[: e.max_prompts or None]
    used = {s.name: s for p in prompts for s in p.subjects}
    confine_files((f"subject {s.name}", str(photo)) for s in used.values() for photo in s.photos)
    for subject in used.values():
        if e.reference_image >= len(subject.photos):
            raise UserError(f"evaluate.reference_image={e.reference_image}, but subject {subject.name} has "
                            f"{len(subject.photos)} photo(s)")
        for photo in subject.photos:  # every photo is a real image of the metrics
            read_image(photo, f"subject {subject.name}")
    canny = canny_images(prompts, e.canny_from) if e.canny_from else {}
    requests = [
        GenerateRequest(p.prompt, [SubjectSpec(s.word, s.photos[e.reference_image]) for s in p.subjects],
                        canny=canny.get(p.id), seed=e.seed + p.index * e.images_per_prompt,
                        num_images=e.images_per_prompt, spans=list(p.spans), where=f"prompt {p.id}")
        for p in prompts
    ]
    missing = []
    if profile.pretrained:
        from lambda_eclipse.models.preflight import _clip

        if not available(cfg.models.dino, "config.json"):
            missing.append(f"DINO ViT-S/16 models.dino={cfg.models.dino}")
        if e.clip_model != CONDITIONING and not _clip(clip_source(cfg)):
            missing.append(f"OpenCLIP evaluate.clip_model={e.clip_model} evaluate.clip_pretrained={e.clip_pretrained}")
    size = e.size or None
    plan = prepare(requests, prior, output, profile, cfg, e.steps, e.guidance, size, size, e.segment, missing,
                   decoder)
    identity = _identity(benchmark, data, profile, cfg, plan)
    _check_resume(plan.output, identity)
    return EvalPlan(benchmark, str(data), cfg, prompts, len(every), plan, identity, describe(profile, cfg))


class Evaluator:
    """The generator and the metric models, loaded once (in a model actor); real-image embeddings computed once per
    subject."""

    def __init__(self, plan: EvalPlan):
        from generate.pipeline import Generator
        from lambda_eclipse.models.dino import load_dino

        g = plan.generate
        self.plan = plan
        self.generator = Generator(g.profile, g.cfg, g.prior, g.segment, g.decoder)
        self.device, self.dtype = self.generator.device, self.generator.dtype
        self.dino = load_dino(g.profile, plan.cfg.models.dino, self.device, self.dtype)
        self.clip = load_eval_clip(g.profile, plan.cfg, self.generator.clip, self.device, self.dtype)
        self._real: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def real(self, subject: BenchSubject) -> tuple[np.ndarray, np.ndarray]:
        """(DINO, CLIP) embeddings of the subject's photos, as they are (DreamBooth scores against the real images)."""
        if subject.name not in self._real:
            photos = [read_image(p, f"subject {subject.name}") for p in subject.photos]
            self._real[subject.name] = (self.dino.encode_images(photos), self.clip.encode_images(photos))
        return self._real[subject.name]

    def segmentation(self, prompt: BenchPrompt, job: Job) -> str:
        """"off", "segmented", or "no box: NAME+…" naming the subjects whose reference photo was embedded whole."""
        if not self.plan.generate.segment:
            return "off"
        failed = [subject.name for subject, bound in zip(prompt.subjects, job.subjects)
                  if self.generator.subject(bound.spec).how == NO_BOX]
        return f"no box: {'+'.join(failed)}" if failed else "segmented"

    def score(self, prompt: BenchPrompt, job: Job) -> tuple[dict, list[np.ndarray]]:
        """Generate the prompt's images and score them: its CSV row, and the images."""
        g = self.plan.generate
        images = self.generator.generate(job, g.settings)
        dino, clip = self.dino.encode_images(images), self.clip.encode_images(images)
        reals = [self.real(s) for s in prompt.subjects]
        text = self.clip.encode_text([prompt.prompt])[1][0]
        row = {
            "id": prompt.id, "group": prompt.group, "prompt": prompt.prompt,
            "subjects": "+".join(s.name for s in prompt.subjects), "seed": job.seed, "images": len(images),
            "dino": round(subjects_similarity(dino, [r[0] for r in reals]), 6),
            "clip_i": round(subjects_similarity(clip, [r[1] for r in reals]), 6),
            "clip_t": round(text_similarity(clip, text), 6),
            "segmentation": self.segmentation(prompt, job), "decoder": decoder_name(g),
        }
        return row, images


def score(evaluator: Evaluator, prompt: BenchPrompt, job: Job) -> tuple[dict, list[np.ndarray]]:
    """`Evaluator.score`, as a model actor runs it."""
    return evaluator.score(prompt, job)


def record(plan: EvalPlan, prompt: BenchPrompt, row: dict, images: list[np.ndarray]) -> None:
    """Write a scored prompt: its images, then its CSV row (what marks it finished)."""
    folder = plan.output / IMAGES / prompt.id
    folder.mkdir(parents=True, exist_ok=True)
    for k, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{k}.png")
    plan.results().append(row)


def start(plan: EvalPlan, dtype: str) -> None:
    """Record what this evaluation is, with the dtype the actors run in (a resumed run must match it too)."""
    plan.identity["dtype"] = dtype
    _check_resume(plan.output, plan.identity)
    write_json_atomic(plan.output / RUN, plan.identity)


def finish(plan: EvalPlan) -> dict:
    """The summary of every finished prompt of this run, written as summary.md and summary.json; per_prompt.csv
    rewritten in benchmark order (actors finish prompts in any order)."""
    results = plan.results()
    order = {p.id: p.index for p in plan.prompts}
    every = results.read()
    ordered = sorted(every, key=lambda r: (r["id"] not in order, order.get(r["id"], 0)))
    if ordered != every:
        results.rewrite(ordered)
    rows = [r for r in ordered if r["id"] in order]
    summary = summarize(rows, GROUPS[plan.benchmark])
    failures = segmentation_failures(rows)
    g = plan.generate
    if "dtype" not in plan.identity and (plan.output / RUN).is_file():  # nothing was left to run: the recorded one
        plan.identity["dtype"] = read_json(plan.output / RUN).get("dtype")
    decoder = (f"fine-tuned decoder UNet `{g.decoder.unet}` (sha256 `{g.decoder.sha256[:16]}…`)" if g.decoder
               else "the profile's Kandinsky 2.2 decoder")
    note = (f"{plan.cfg.evaluate.images_per_prompt} images per prompt, {g.settings.steps} DDIM steps, guidance "
            f"{g.settings.guidance}, {g.settings.width}×{g.settings.height} px, {g.profile} profile, prior "
            f"`{g.prior.path}` (sha256 `{g.prior.sha256[:16]}…`), {decoder}.")
    canny = plan.cfg.evaluate.canny_from
    if canny:
        note += (f" Canny edge maps of {canny}'s images control the prompts "
                 f"({g.prior.canny()['from']}: shorter side {g.prior.canny()['size'] or 'as it is'}).")
    markdown = summary_markdown((CANNY_TITLES if canny else TITLES)[plan.benchmark], summary, len(plan.prompts), note,
                                plan.encoders, failures, g.segment, PAPER_CANNY if canny else PAPER)
    (plan.output / SUMMARY_MD).write_text(markdown + "\n")
    result = {"benchmark": plan.benchmark, "prompts": len(plan.prompts), "evaluated": len(rows), "summary": summary,
              "output": str(plan.output), "encoders": plan.encoders, "segmentation_failures": failures,
              "decoder": g.decoder.describe() if g.decoder else "base"}
    write_json_atomic(plan.output / SUMMARY_JSON, result | {"identity": plan.identity})
    return result | {"markdown": markdown}
