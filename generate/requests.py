"""What to generate: requests as the user gives them, checked into jobs before any model loads.

A batch file (`--batch prompts.jsonl`) holds one JSON object per line:

    {"prompt": "a dog wearing a hat", "subjects": {"dog": "dog.jpg", "hat": "hat.png"}}
    {"prompt": "a dog and a dog", "subjects": [{"word": "dog", "image": "a.jpg", "mask": "a_mask.png"},
                                               {"word": "dog", "image": "b.jpg"}], "canny": "edges.jpg",
     "seed": 3, "num_images": 2}

Relative paths are relative to the batch file; `seed` and `num_images` default to the command line's.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from generate.subjects import SubjectSpec, parse_subject, read_image, read_mask
from generate.token_spans import bind_words, locate, truncation_warning
from lambda_eclipse.errors import UserError
from tasks.config import SubjectsSection

# The prior was trained on images with 1–4 subjects (paper Appendix B, subjects.max_subjects).
MAX_SUBJECTS = SubjectsSection().max_subjects
BATCH_KEYS = {"prompt", "subjects", "canny", "seed", "num_images"}


@dataclass
class GenerateRequest:
    prompt: str
    subjects: list[SubjectSpec] = field(default_factory=list)
    canny: str | None = None  # an image whose Canny edge map is the control input
    seed: int = 0
    num_images: int = 1
    # Character spans of the subjects in the prompt, when the caller knows them (evaluate's templates); else each
    # subject's word is found in the prompt (token_spans.bind_words).
    spans: list[tuple[int, int]] | None = None
    where: str = ""  # where the request came from, for error messages ("prompts.jsonl:3")


@dataclass(frozen=True)
class BoundSubject:
    spec: SubjectSpec
    span: tuple[int, int]
    token_positions: list[int]


@dataclass(frozen=True)
class Job:
    """A checked request: every subject bound to its tokens, every image readable."""

    index: int
    prompt: str
    subjects: list[BoundSubject]
    canny: str | None
    seed: int
    num_images: int
    truncated: str | None

    @property
    def seeds(self) -> list[int]:
        """Image k of a job uses seed + k (the prior's noise and the decoder's latents), so each is reproducible."""
        return [self.seed + k for k in range(self.num_images)]


@dataclass(frozen=True)
class RenderSettings:
    steps: int = 50  # DDIM steps (paper §4)
    guidance: float = 7.5  # classifier-free guidance scale (paper §4)
    height: int = 512
    width: int = 512

    def check(self) -> RenderSettings:
        if self.steps < 1:
            raise UserError(f"--steps must be ≥ 1, got {self.steps}")
        if self.guidance < 0:
            raise UserError(f"--guidance must be ≥ 0, got {self.guidance}")
        return self


def check_request(request: GenerateRequest, index: int, tokenizer) -> tuple[Job, list[str]]:
    """The job for a request and its warnings (a truncated prompt); a UserError for anything that cannot run."""
    at = f"{request.where}: " if request.where else ""
    prompt = request.prompt
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError(f"{at}the prompt is empty")
    if request.num_images < 1:
        raise UserError(f"{at}--num-images must be ≥ 1, got {request.num_images}")
    if len(request.subjects) > MAX_SUBJECTS:
        raise UserError(
            f"{at}{len(request.subjects)} subjects given; the prior takes at most {MAX_SUBJECTS} (it was trained on "
            f"images with 1–{MAX_SUBJECTS} subjects, paper Appendix B)"
        )
    try:
        spans = request.spans if request.spans is not None else bind_words(prompt, [s.word for s in request.subjects])
        tokens = locate(tokenizer, prompt, spans)
    except UserError as exc:
        raise UserError(f"{at}{exc}") from None
    for spec in request.subjects:
        image = read_image(spec.image, f"{at}subject {spec.word!r}")
        if spec.mask is not None:
            read_mask(spec.mask, image.shape[:2], f"{at}subject {spec.word!r}")
    if request.canny is not None:
        read_image(request.canny, f"{at}--canny")
    # Absolute paths: the model actors that read the images may run in another working directory.
    specs = [SubjectSpec(s.word, os.path.abspath(s.image), s.mask and os.path.abspath(s.mask))
             for s in request.subjects]
    subjects = [BoundSubject(spec, span, positions) for spec, span, positions in zip(specs, spans, tokens.positions)]
    canny = request.canny and os.path.abspath(request.canny)
    job = Job(index, prompt, subjects, canny, request.seed, request.num_images, tokens.truncated)
    warning = truncation_warning(prompt, tokens)
    return job, [f"{at}{warning}"] if warning else []


def _optional_path(value, base: Path, where: str, key: str) -> str | None:
    return None if value is None else _path(value, base, where, key)


def _path(value, base: Path, where: str, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise UserError(f"{where}: {key} must be a path string, got {value!r}")
    return str(base / value) if not Path(value).is_absolute() else value


def _subjects(value, base: Path, where: str) -> list[SubjectSpec]:
    if value is None:
        return []
    if isinstance(value, dict):
        return [SubjectSpec(str(word), _path(path, base, where, f"subject {word!r}")) for word, path in value.items()]
    if isinstance(value, list):
        specs = []
        for item in value:
            keys = item.keys() if isinstance(item, dict) else set()
            if not {"word", "image"} <= keys or keys - {"word", "image", "mask"}:
                raise UserError(f"{where}: each subject must be {{\"word\": …, \"image\": …, \"mask\": … "
                                f"(optional)}}, got {item!r}")
            specs.append(SubjectSpec(str(item["word"]), _path(item["image"], base, where, "image"),
                                     _optional_path(item.get("mask"), base, where, "mask")))
        return specs
    raise UserError(f"{where}: subjects must be a {{word: image}} object or a list of {{word, image, mask}} objects")


def read_batch(path: str | Path, seed: int, num_images: int) -> list[GenerateRequest]:
    """The requests of a JSON-lines batch file (blank lines skipped); errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--batch {path} does not exist")
    requests = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(item, dict) or "prompt" not in item:
            raise UserError(f"{where}: each line must be a JSON object with a \"prompt\"")
        unknown = item.keys() - BATCH_KEYS
        if unknown:
            raise UserError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(BATCH_KEYS)}")
        for key, default in (("seed", seed), ("num_images", num_images)):
            if not isinstance(item.get(key, default), int) or isinstance(item.get(key), bool):
                raise UserError(f"{where}: {key} must be an integer, got {item[key]!r}")
        requests.append(GenerateRequest(
            prompt=item["prompt"], subjects=_subjects(item.get("subjects"), path.parent, where),
            canny=_optional_path(item.get("canny"), path.parent, where, "canny"), seed=item.get("seed", seed),
            num_images=item.get("num_images", num_images), where=where,
        ))
    if not requests:
        raise UserError(f"--batch {path} holds no requests (one JSON object per line)")
    return requests


def request_files(requests: list[GenerateRequest]) -> list[tuple[str, str | None]]:
    """Every file the requests name, as (what, path) for error messages ("prompts.jsonl:3: subject 'dog'")."""
    files: list[tuple[str, str | None]] = []
    for request in requests:
        at = f"{request.where}: " if request.where else ""
        for spec in request.subjects:
            files += [(f"{at}subject {spec.word!r} image", spec.image), (f"{at}subject {spec.word!r} mask", spec.mask)]
        files.append((f"{at}canny", request.canny))
    return files


def check_requests(requests: list[GenerateRequest], tokenizer) -> tuple[list[Job], list[str]]:
    jobs, warnings = [], []
    for i, request in enumerate(requests):
        job, notes = check_request(request, i, tokenizer)
        jobs.append(job)
        warnings += notes
    return jobs, warnings


def requests_from_args(prompt: str | None, subjects: list[str] | None, canny: str | None, batch: str | None,
                       seed: int, num_images: int) -> list[GenerateRequest]:
    """The requests of `generate`'s arguments: one prompt with its --subject WORD=IMAGE[:MASK]s, or a batch file."""
    if (prompt is None) == (batch is None):
        raise UserError("give either --prompt (one prompt) or --batch FILE.jsonl (many prompts, one model load)")
    if batch is not None:
        if subjects or canny:
            raise UserError("--subject and --canny go with --prompt; in a --batch file each line names its own")
        return read_batch(batch, seed, num_images)
    assert prompt is not None  # exactly one of prompt and batch, checked above
    return [GenerateRequest(prompt, [parse_subject(s) for s in subjects or []], canny, seed, num_images)]


CORNERS = (2, 4)  # interpolate's grid: the ends of a row, or the corners of a square


def check_corners(corners: int) -> None:
    if corners not in CORNERS:
        raise UserError(f"--corners takes 2 or 4 concept sets (the ends of a row, or the corners of a square), "
                        f"got {corners}")


def check_grid(corners: int, steps: int) -> None:
    check_corners(corners)
    if steps < 2:
        raise UserError(f"--steps must be ≥ 2 (the grid includes its corners), got {steps}")


def corner_requests(prompts: list[str], corners: list[str], seed: int) -> list[GenerateRequest]:
    """interpolate's corners: each a comma-separated list of WORD=IMAGE[:MASK] (may be empty: the prompt alone), with
    one prompt shared by all corners or one prompt per corner."""
    check_corners(len(corners))
    if len(prompts) not in (1, len(corners)):
        raise UserError(f"give one --prompt for all corners or one per corner ({len(corners)}), got {len(prompts)}")
    prompts = prompts * len(corners) if len(prompts) == 1 else prompts
    return [
        GenerateRequest(prompt, [parse_subject(s) for s in corner.split(",") if s.strip()], seed=seed,
                        where=f"corner {i + 1}")
        for i, (prompt, corner) in enumerate(zip(prompts, corners))
    ]
