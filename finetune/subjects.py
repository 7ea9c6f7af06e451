"""`--subject NAME=DIR`: the concepts to fine-tune on, each a folder of reference photos.

NAME is the subject's name (a DreamBench folder name such as `backpack_dog`, or any name); the word Grounding DINO
looks for when segmenting its photos is the DreamBench class of NAME when it is a DreamBench subject, else NAME with
"_" read as a space, as evaluate reads its subject folders (evaluation/benchmarks.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from evaluation.benchmarks import load_benchmarks
from lambda_eclipse.errors import UserError
from tasks.config import InputSection


@dataclass(frozen=True)
class Subject:
    name: str
    word: str  # what segmentation looks for in its photos
    folder: str
    photos: tuple[str, ...]  # sorted paths


def parse_subject(text: str) -> tuple[str, str]:
    """`NAME=DIR` → (name, dir)."""
    name, sep, folder = text.partition("=")
    if not sep or not name.strip() or not folder.strip():
        raise UserError(f"--subject {text!r}: expected NAME=DIR (a name and a folder of its photos), for example "
                        "dog=photos/dog")
    return name.strip(), folder.strip()


def read_subjects(specs: list[str]) -> list[Subject]:
    """Every `NAME=DIR`, checked: at least one, names unique, each folder exists and holds photos."""
    if not specs:
        raise UserError("no --subject given; pass one --subject NAME=DIR per concept")
    classes = load_benchmarks()["dreambench"]["subjects"]
    extensions = InputSection().extensions
    subjects: list[Subject] = []
    for spec in specs:
        name, folder = parse_subject(spec)
        if any(s.name == name for s in subjects):
            raise UserError(f"--subject {name} is given twice; each subject takes one folder (put all its photos "
                            "in it)")
        path = Path(folder)
        if not path.is_dir():
            raise UserError(f"--subject {spec}: {folder} is not a directory; it must be a folder of the subject's "
                            "photos")
        photos = tuple(str(p) for p in sorted(path.iterdir()) if p.is_file() and p.suffix.lower() in extensions)
        if not photos:
            raise UserError(f"--subject {spec}: {folder} holds no photos ({', '.join(extensions)})")
        known = classes.get(name)
        subjects.append(Subject(name, known["class"] if known else name.replace("_", " "), folder, photos))
    return subjects
