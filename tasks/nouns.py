"""Nouns stage: the caption's single-word nouns, which Grounding DINO is then asked to find (Appendix B)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lambda_eclipse.config import ModelsSection
from lambda_eclipse.required import required
from storage.sample import Noun, Sample
from tasks.base import Stage

if TYPE_CHECKING:
    from spacy.tokens import Doc


def caption_nouns(doc: Doc) -> list[Noun]:
    """Alphabetic NOUN tokens with their character spans, in caption order, first occurrence per word.

    Tokens are substrings of the caption, so each noun occurs verbatim at its span. Repeats of one noun are
    left to the box filters (identical objects), which see every box Grounding DINO finds for it.
    """
    nouns, seen = [], set()
    for token in doc:
        if token.pos_ == "NOUN" and token.is_alpha and token.lower_ not in seen:
            seen.add(token.lower_)
            nouns.append(Noun(token.text, token.idx, token.idx + len(token.text)))
    return nouns


@dataclass
class Nouns(Stage):
    name = "nouns"
    uses_model = True
    cpu_seconds = 0.005  # spaCy en_core_web_sm on a caption
    models: ModelsSection = field(default_factory=ModelsSection)

    def setup(self) -> None:
        from lambda_eclipse.models.spacy_nlp import load_spacy  # spaCy loads in the actor only

        self.nlp = load_spacy(self.models)

    def output(self, sample: Sample) -> dict:
        return {"nouns": [[n.text, n.start, n.end] for n in sample.nouns]}

    def apply(self, sample: Sample, record: dict) -> None:
        sample.nouns = [Noun(text, start, end) for text, start, end in record["value"]["nouns"]]

    def process(self, samples: list[Sample]) -> None:
        for sample, doc in zip(samples, self.nlp.pipe(required(s.caption, "sample.caption") for s in samples)):
            sample.nouns = caption_nouns(doc)
            if not sample.nouns:
                sample.reject_at(self.name, "no nouns in caption")
