"""Where each subject sits in the prompt: character span of its word, then the CLIP token positions of that span.

The released λ-ECLIPSE code overwrites every occurrence of each of the word's sub-tokens anywhere in the prompt and
only warns when the word is absent. Here a subject binds one occurrence of its word, by character span:

- Matching is whole-word and case-insensitive ("Dog" in the prompt matches `--subject dog`; "dogs" and "hotdog" do
  not), punctuation next to the word does not matter ("dog," "dog's" "(dog)"), and a multi-word subject matches its
  words separated by any whitespace ("stuffed animal").
- Repeated words: the k-th subject given for a word binds the k-th occurrence of that word in the prompt. One subject
  for a word that occurs twice binds the first occurrence only (as in training, where each subject replaced exactly
  one noun span of the caption); the later occurrences keep their text states. Two subjects for "dog" in
  "a dog chasing another dog" bind the two occurrences in order. More subjects for a word than occurrences is an error.
- Multi-token words: every token of the word's span gets the subject's image embedding (prior/data.py's
  `interleave`, the training policy).
- Truncation: CLIP keeps 75 word tokens (77 minus start and end of text). A longer prompt is reported with the text
  that was cut; a subject whose tokens fall in the cut part is an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lambda_eclipse.errors import UserError
from lambda_eclipse.models.clip import CONTEXT_LENGTH, token_positions
from tasks.features import LAST_WORD_SLOT

WORD_TOKENS = CONTEXT_LENGTH - 2  # start-of-text and end-of-text take the other two slots


def word_spans(prompt: str, word: str) -> list[tuple[int, int]]:
    """Character spans [start, end) of the whole-word, case-insensitive occurrences of `word` in `prompt`."""
    parts = word.split()
    if not parts:
        raise UserError("a subject word is empty; write it as WORD=IMAGE, for example dog=dog.jpg")
    pattern = r"(?<!\w)" + r"\s+".join(re.escape(p) for p in parts) + r"(?!\w)"
    return [m.span() for m in re.finditer(pattern, prompt, flags=re.IGNORECASE)]


def bind_words(prompt: str, words: list[str]) -> list[tuple[int, int]]:
    """One character span per subject word, by the repeated-word rule above; a UserError names an unbindable word."""
    spans, used = [], {}
    for word in words:
        found = word_spans(prompt, word)
        key = " ".join(word.lower().split())
        k = used.get(key, 0)
        if not found:
            raise UserError(f"subject word {word!r} is not in the prompt {prompt!r} (whole words, any case); "
                            "write the word into the prompt where the subject belongs")
        if k >= len(found):
            raise UserError(f"{k + 1} subjects are given for the word {word!r}, but the prompt {prompt!r} has it "
                            f"{len(found)} time(s); each subject binds one occurrence")
        used[key] = k + 1
        spans.append(found[k])
    overlapping = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1:] if a[0] < b[1] and b[0] < a[1]]
    if overlapping:
        a, b = overlapping[0]
        raise UserError(f"subjects {prompt[a[0]:a[1]]!r} and {prompt[b[0]:b[1]]!r} overlap in the prompt {prompt!r}; "
                        "each subject needs its own words")
    return spans


@dataclass(frozen=True)
class PromptTokens:
    positions: list[list[int]]  # per subject, its token indices in the 77-token sequence
    n_tokens: int  # word tokens of the whole prompt, before truncation
    truncated: str | None  # the text CLIP drops, or None when the prompt fits


def locate(tokenizer, prompt: str, spans: list[tuple[int, int]]) -> PromptTokens:
    """Token positions of each span; truncation reported, a subject cut off by it refused."""
    tokens = tokenizer.encode(prompt)
    truncated = tokenizer.decode(tokens[WORD_TOKENS:]).strip() if len(tokens) > WORD_TOKENS else None
    positions = []
    for start, end in spans:
        word = prompt[start:end]
        try:
            found = token_positions(tokenizer, prompt, start, end)
        except ValueError as exc:
            raise UserError(f"subject word {word!r}: {exc}") from None
        if found[-1] >= LAST_WORD_SLOT:
            raise UserError(
                f"the prompt is {len(tokens)} CLIP tokens; CLIP keeps the first {WORD_TOKENS}, and subject word "
                f"{word!r} (tokens {found[0]}–{found[-1]}) falls in the part that is cut: {truncated!r}; "
                "shorten the prompt or move the word forward"
            )
        positions.append(found)
    return PromptTokens(positions, len(tokens), truncated)


def truncation_warning(prompt: str, tokens: PromptTokens) -> str | None:
    if tokens.truncated is None:
        return None
    return (f"the prompt {prompt[:40]!r}… is {tokens.n_tokens} CLIP tokens; CLIP keeps the first {WORD_TOKENS}, so "
            f"this part is ignored: {tokens.truncated!r}")
