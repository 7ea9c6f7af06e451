"""DreamBench and Multibench prompts over a data folder of subjects (one folder of photos per subject).

- DreamBench (DreamBooth's dataset, paper Table 2): each folder is a DreamBench subject (`dog`, `backpack_dog`, …);
  its 25 prompts are the live-subject or object prompts of benchmarks.json with {subject} = the subject's class name
  ("a dog in the jungle", "a stuffed animal on the beach"); the class name is the subject word. Folders that are not
  DreamBench subjects are an error.
- Multibench (paper Appendix F, Table 4): role-aware prompts. benchmarks.json gives each Table 8 template the role
  of each of its slots (a living subject first; then a place, a wearable, an object, a landmark, … as the template
  calls for it: "{} wearing a {}" takes a living subject and a wearable) and each role its category words (Table 9's
  categories, DreamBench's classes as objects). A folder's word is its DreamBench class when it is a DreamBench
  subject, else its name with "_" read as a space and a trailing number dropped (`guinea_pig` → "guinea pig",
  `park_2` → "park"); a folder whose word has no role is an error. Every filling of a template by distinct folders
  with distinct words whose roles fit its slots is a candidate (in an `unordered` template, slots of one role take
  folders in sorted order: "cat and dog in the snow" without "dog and cat in the snow"); no "dog wearing a dog" or
  "dog and dog". The paper published its counts (904 two- and 1,476 three-subject prompts, `paper_counts`; its
  total "2,308" is not their sum, 2,380), not its combinations: where a group has more candidates, a fixed-seed
  sample of that many is kept (in candidate order: templates in order, two-subject prompts first), else all of
  them. The count therefore depends on --data: the 30
  DreamBench folders alone have no bird, horse, guinea pig, hat, park, … (the paper's added concepts) and give
  fewer prompts (162 two-, 1,476 of 2,447 three-subject); with one folder per Table 9 category DreamBench lacks
  (bird, horse, guinea_pig, hat, park, ruins, castle, desert, hill, church, tower, rainbow, boat, guitar,
  french_horn, robot) and a second bird, horse and guinea pig, 990 and 18,104 candidates give exactly 904 and 1,476
  (tests/test_benchmarks.py). `multibench_candidates` counts them. `evaluate.max_prompts` bounds a run.

With `evaluate.multibench_files=DIR` the prompts are read from a folder of prompt files instead, as they are (no
sampling): the authors' released Multibench prompts, whose exact file format is not known here, so this is the layout
expected (docs/paper-defaults.md): every DIR/*.jsonl, in file-name order, one JSON object per line,
{"prompt": "a dog wearing a hat", "subjects": ["dog", "hat"]}, naming 2 or 3 --data folders in the order their words
occur in the prompt (each word found as a whole word, any case, after the previous one). A prompt's id is
"<file stem>/<line number>".

Placeholders are filled by position, so each subject's character span in the prompt is known exactly (also when two
subjects share a word), and the filled prompt is the CLIP-T text: the prompt without
subject placeholders, as DreamBooth scores its prompts without the identifier token.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from itertools import product
from pathlib import Path

from lambda_eclipse.errors import UserError
from tasks.config import InputSection

BENCHMARKS = ("dreambench", "multibench")
BUNDLED = Path(__file__).with_name("benchmarks.json")  # the paper's prompts and templates (docs/paper-parameters.md)
GROUPS = {"dreambench": ("single subject",), "multibench": ("two subjects", "three subjects")}
PLACEHOLDER = re.compile(r"\{(?:subject)?\}")
SIZES = ((2, "two_subject_templates", "two subjects"), (3, "three_subject_templates", "three subjects"))


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
                        "(see the bundled evaluation/benchmarks.json)")
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
    extensions = InputSection().extensions
    subjects = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        photos = tuple(str(p) for p in sorted(folder.iterdir()) if p.suffix.lower() in extensions)
        if not photos:
            raise UserError(f"subject folder {folder} has no photos ({', '.join(extensions)})")
        known = dreambench["subjects"].get(folder.name)
        word = known["class"] if known else re.sub(r"_*\d+$", "", folder.name).replace("_", " ")
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


def _multibench_section(bench: dict) -> dict:
    """The role-aware Multibench section, checked: every template's slots name known roles, one per placeholder."""
    section = bench["multibench"]
    missing = [k for k in ("roles", "slots", "paper_counts") if k not in section]
    if missing:
        raise UserError(f"the benchmarks file's multibench section lacks {', '.join(missing)}: Multibench prompts are "
                        "built from roles (see evaluation/benchmarks.json)")
    for _, key, _ in SIZES:
        for template in section[key]:
            roles = section["slots"].get(template)
            if roles is None or len(roles) != len(PLACEHOLDER.findall(template)):
                raise UserError(f"multibench template {template!r} needs slots: one role per placeholder")
            unknown = [r for r in roles if r not in section["roles"]]
            if unknown:
                raise UserError(f"multibench template {template!r}: unknown roles {unknown}; roles are "
                                f"{', '.join(section['roles'])}")
    return section


def multibench_candidates(subjects: list[BenchSubject], bench: dict) -> dict[str, list[tuple[int, tuple]]]:
    """Per group, every (template number, subjects) whose roles fit, in template order, before any sampling."""
    section = _multibench_section(bench)
    words_with_role = {word for words in section["roles"].values() for word in words}
    unknown = sorted(s.name for s in subjects if s.word not in words_with_role)
    if unknown:
        raise UserError(f"--data folders {unknown} are no Multibench category (their words have no role); known: "
                        f"{', '.join(sorted(words_with_role))}. Rename the folder or add its word to a role in a "
                        "benchmarks file (evaluate.benchmarks)")
    candidates: dict[str, list[tuple[int, tuple]]] = {}
    for _, key, group in SIZES:
        found = candidates.setdefault(group, [])
        for t, template in enumerate(section[key]):
            roles = section["slots"][template]
            unordered = template in section.get("unordered", ())
            options = [[i for i, s in enumerate(subjects) if s.word in section["roles"][role]] for role in roles]
            for chosen in product(*options):
                if len({subjects[i].word for i in chosen}) < len(chosen):
                    continue  # a folder or a word twice: "dog wearing a dog", "dog and dog"
                if unordered and any(roles[a] == roles[b] and chosen[a] > chosen[b]
                                     for a in range(len(roles)) for b in range(a + 1, len(roles))):
                    continue
                found.append((t, tuple(subjects[i] for i in chosen)))
    return candidates


def multibench_prompts(subjects: list[BenchSubject], bench: dict) -> list[BenchPrompt]:
    if len(subjects) < 2:
        raise UserError(f"Multibench needs at least 2 subject folders in --data, found {len(subjects)}")
    candidates = multibench_candidates(subjects, bench)
    if not any(candidates.values()):
        raise UserError(f"no Multibench prompt fits the --data folders {[s.name for s in subjects]}: every template "
                        "needs a living subject (dog, cat, …) and a second one of the role its template calls for")
    section = bench["multibench"]
    prompts = []
    for n, key, group in SIZES:
        found, target = candidates[group], int(section["paper_counts"][group])
        if len(found) > target:  # the paper's count, sampled with a fixed seed, kept in candidate order
            found = [found[i] for i in sorted(random.Random(f"multibench/{group}").sample(range(len(found)), target))]
        for t, chosen in found:
            text, spans = fill(section[key][t], [s.word for s in chosen])
            pid = f"{n}/{t:02d}/{'+'.join(s.name for s in chosen)}"
            prompts.append(BenchPrompt(pid, len(prompts), group, text, chosen, tuple(spans)))
    return prompts


def read_multibench_files(subjects: list[BenchSubject], folder: str | Path) -> list[BenchPrompt]:
    """Multibench prompts from a folder of prompt files (the layout in the module docstring), in file and line order."""
    root = Path(folder)
    files = sorted(root.glob("*.jsonl")) if root.is_dir() else []
    if not files:
        raise UserError(f"evaluate.multibench_files={folder}: no *.jsonl prompt files there (one JSON object per line: "
                        '{"prompt": "a dog wearing a hat", "subjects": ["dog", "hat"]})')
    by_name = {s.name: s for s in subjects}
    groups = {n: group for n, _, group in SIZES}
    prompts = []
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                item = json.loads(line)
                text, names = item["prompt"], item["subjects"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f'{where}: expected {{"prompt": "...", "subjects": ["folder", ...]}}') from None
            if not isinstance(text, str) or not isinstance(names, list) or len(names) not in groups:
                raise UserError(f"{where}: a prompt text and a list of 2 or 3 subject folders, got {line.strip()!r}")
            unknown = [n for n in names if n not in by_name]
            if unknown:
                raise UserError(f"{where}: subjects {unknown} are not folders of --data ({', '.join(sorted(by_name))})")
            chosen = tuple(by_name[n] for n in names)
            spans, start = [], 0
            for subject in chosen:
                found = re.compile(rf"\b{re.escape(subject.word)}\b", re.IGNORECASE).search(text, start)
                if found is None:
                    raise UserError(f"{where}: subject {subject.name}'s word {subject.word!r} is not in {text!r} "
                                    "after the previous subject's")
                spans.append(found.span())
                start = found.end()
            prompts.append(BenchPrompt(f"{path.stem}/{number:05d}", len(prompts), groups[len(names)], text, chosen,
                                       tuple(spans)))
    return prompts


def benchmark_prompts(benchmark: str, data: str | Path, bench: dict, multibench_files: str = "") -> list[BenchPrompt]:
    if benchmark not in BENCHMARKS:
        raise UserError(f"unknown benchmark {benchmark!r}; choose one of: {', '.join(BENCHMARKS)}")
    subjects = read_subjects(data, bench["dreambench"])
    if benchmark == "dreambench":
        if multibench_files:
            raise UserError("evaluate.multibench_files is for --benchmark multibench")
        return dreambench_prompts(subjects, bench)
    return read_multibench_files(subjects, multibench_files) if multibench_files else multibench_prompts(subjects,
                                                                                                          bench)
