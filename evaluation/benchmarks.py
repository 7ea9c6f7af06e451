"""DreamBench and Multibench prompts over a data folder of subjects (one folder of photos per subject).

- DreamBench (DreamBooth's dataset, paper Table 2): each folder is a DreamBench subject (`dog`, `backpack_dog`, …);
  its 25 prompts are the live-subject or object prompts of benchmarks.json with {subject} = the subject's class name
  ("a dog in the jungle", "a stuffed animal on the beach"); the class name is the subject word. Folders that are not
  DreamBench subjects are an error.
- Multibench (paper Appendix F, Table 4): the 2- and 3-subject templates of benchmarks.json filled with every ordered
  choice of distinct subject folders, templates in order, two-subject prompts first. A folder's subject word is its
  DreamBench class when it is a DreamBench subject, else its name with "_" read as a space (`guinea_pig` →
  "guinea pig"). The paper did not publish which subject combinations it used; `evaluate.max_prompts` bounds a run.

Placeholders are filled by position, so each subject's character span in the prompt is known exactly (also when two
subjects share a word: "dog and dog in the snow"), and the filled prompt is the CLIP-T text: the prompt without
subject placeholders, as DreamBooth scores its prompts without the identifier token.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path

from lambda_eclipse.config import InputConfig
from lambda_eclipse.errors import UserError

BENCHMARKS = ("dreambench", "multibench")
BUNDLED = Path(__file__).with_name("benchmarks.json")  # a copy of shared/reference/benchmarks.json
GROUPS = {"dreambench": ("single subject",), "multibench": ("two subjects", "three subjects")}
PLACEHOLDER = re.compile(r"\{(?:subject)?\}")


@dataclass(frozen=True)
class BenchSubject:
    name: str  # the folder's name
    word: str  # its word in the prompts
    photos: tuple[str, ...]  # sorted paths


@dataclass(frozen=True)
class BenchPrompt:
    id: str  # unique and stable: keys the resumable results
    index: int  # position in the benchmark's full prompt list: decides the seeds
    group: str  # a summary row (GROUPS)
    prompt: str
    subjects: tuple[BenchSubject, ...]
    spans: tuple[tuple[int, int], ...]  # each subject's characters in the prompt


def load_benchmarks(path: str = "") -> dict:
    source = Path(path) if path else BUNDLED
    if not source.is_file():
        raise UserError(f"evaluate.benchmarks={path}: no such file")
    try:
        data = json.loads(source.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not all(b in data for b in BENCHMARKS):
        raise UserError(f"{source} must hold the sections {', '.join(BENCHMARKS)} "
                        "(see shared/reference/benchmarks.json)")
    return data


def fill(template: str, words: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """The template with its placeholders replaced by `words` in order, and each word's character span."""
    pieces = PLACEHOLDER.split(template)
    if len(pieces) - 1 != len(words):
        raise UserError(f"template {template!r} has {len(pieces) - 1} placeholders, not {len(words)}")
    prompt, spans = pieces[0], []
    for word, piece in zip(words, pieces[1:]):
        spans.append((len(prompt), len(prompt) + len(word)))
        prompt += word + piece
    return prompt, spans


def read_subjects(data: str | Path, dreambench: dict) -> list[BenchSubject]:
    root = Path(data)
    if not root.is_dir():
        raise UserError(f"--data {root} is not a directory; it must hold one folder of photos per subject")
    extensions = InputConfig().extensions
    subjects = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        photos = tuple(str(p) for p in sorted(folder.iterdir()) if p.suffix.lower() in extensions)
        if not photos:
            raise UserError(f"subject folder {folder} has no photos ({', '.join(extensions)})")
        known = dreambench["subjects"].get(folder.name)
        word = known["class"] if known else folder.name.replace("_", " ")
        subjects.append(BenchSubject(folder.name, word, photos))
    if not subjects:
        raise UserError(f"--data {root} has no subject folders")
    return subjects


def dreambench_prompts(subjects: list[BenchSubject], bench: dict) -> list[BenchPrompt]:
    known = bench["dreambench"]["subjects"]
    unknown = [s.name for s in subjects if s.name not in known]
    if unknown:
        raise UserError(f"--data folders {unknown} are not DreamBench subjects; the 30 subjects are: "
                        f"{', '.join(sorted(known))}")
    prompts = []
    for subject in subjects:
        kind = "live_subject_prompts" if known[subject.name]["live"] else "object_prompts"
        for k, template in enumerate(bench["dreambench"][kind]):
            text, spans = fill(template, [subject.word])
            prompts.append(BenchPrompt(f"{subject.name}/{k:02d}", len(prompts), "single subject", text, (subject,),
                                       tuple(spans)))
    return prompts


def multibench_prompts(subjects: list[BenchSubject], bench: dict) -> list[BenchPrompt]:
    if len(subjects) < 2:
        raise UserError(f"Multibench needs at least 2 subject folders in --data, found {len(subjects)}")
    prompts = []
    sizes = ((2, "two_subject_templates", "two subjects"), (3, "three_subject_templates", "three subjects"))
    for n, key, group in sizes:
        for t, template in enumerate(bench["multibench"][key]):
            for chosen in permutations(subjects, n):
                text, spans = fill(template, [s.word for s in chosen])
                pid = f"{n}/{t:02d}/{'+'.join(s.name for s in chosen)}"
                prompts.append(BenchPrompt(pid, len(prompts), group, text, chosen, tuple(spans)))
    return prompts


def benchmark_prompts(benchmark: str, data: str | Path, bench: dict) -> list[BenchPrompt]:
    if benchmark not in BENCHMARKS:
        raise UserError(f"unknown benchmark {benchmark!r}; choose one of: {', '.join(BENCHMARKS)}")
    subjects = read_subjects(data, bench["dreambench"])
    return (dreambench_prompts if benchmark == "dreambench" else multibench_prompts)(subjects, bench)
