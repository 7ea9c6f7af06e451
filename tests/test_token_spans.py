"""Subject word → character span → CLIP token positions (generate/token_spans.py), against the real CLIP tokenizer."""

import pytest

from generate.plan import tokenizer
from generate.token_spans import WORD_TOKENS, bind_words, locate, word_spans
from lambda_eclipse.errors import UserError

TOK = tokenizer()


def positions(prompt, words):
    return locate(TOK, prompt, bind_words(prompt, words)).positions


def test_tokens_are_where_the_word_is():
    # <sot> a(1) dog(2) wearing(3) a(4) hat(5)
    assert positions("a dog wearing a hat", ["dog", "hat"]) == [[2], [5]]


def test_multi_token_words_take_all_their_tokens():
    # "labradoodle" is labra + doodle, "xylophone" is xy + lo + phone in CLIP's BPE:
    # <sot>(0) a(1) labra(2) doodle(3) playing(4) a(5) xy(6) lo(7) phone(8)
    assert len(TOK.encode("labradoodle")) == 2 and len(TOK.encode("xylophone")) == 3
    assert positions("a labradoodle playing a xylophone", ["labradoodle", "xylophone"]) == [[2, 3], [6, 7, 8]]


def test_multi_word_subject_spans_its_words():
    prompt = "a stuffed  animal on the beach"
    assert word_spans(prompt, "stuffed animal") == [(2, 17)]
    assert positions(prompt, ["stuffed animal"]) == [[2, 3]]


def test_case_is_ignored_and_the_prompt_keeps_its_own():
    assert word_spans("A Dog and a DOG", "dog") == [(2, 5), (12, 15)]
    assert positions("A Dog on the beach", ["DOG"]) == [[2]]


@pytest.mark.parametrize("prompt, expected", [
    ("a dog, wearing a hat", [2]),
    ("(dog) on a hat", [2]),
    ("the dog's hat", [2]),
    ("a hot-dog stand", [4]),  # "-" separates words for CLIP too: hot - dog
    ("dog!", [1]),
])
def test_punctuation_next_to_the_word(prompt, expected):
    assert positions(prompt, ["dog"]) == [expected]


@pytest.mark.parametrize("prompt", ["two dogs on the beach", "a hotdog stand", "dog2 on the beach", "a dogma"])
def test_a_word_inside_another_word_is_not_the_word(prompt):
    with pytest.raises(UserError, match=r"subject word 'dog' is not in the prompt"):
        bind_words(prompt, ["dog"])


def test_one_subject_binds_the_first_of_repeated_words():
    prompt = "a dog chasing another dog"
    assert bind_words(prompt, ["dog"]) == [(2, 5)]
    assert positions(prompt, ["dog"]) == [[2]]


def test_repeated_subjects_bind_occurrences_in_order():
    prompt = "a dog chasing another Dog"
    assert bind_words(prompt, ["dog", "dog"]) == [(2, 5), (22, 25)]
    assert positions(prompt, ["dog", "dog"]) == [[2], [5]]


def test_more_subjects_than_occurrences_is_an_error():
    with pytest.raises(UserError, match=r"2 subjects are given for the word 'dog', but the prompt .* has it 1 time"):
        bind_words("a dog wearing a hat", ["dog", "dog"])


def test_overlapping_subjects_are_an_error():
    with pytest.raises(UserError, match=r"subjects 'stuffed animal' and 'animal' overlap"):
        bind_words("a stuffed animal", ["stuffed animal", "animal"])


def test_empty_word_is_an_error():
    with pytest.raises(UserError, match="a subject word is empty"):
        bind_words("a dog", ["  "])


def test_a_long_prompt_reports_what_is_cut():
    filler = " ".join(["red"] * 80)
    prompt = f"a dog and {filler} hat"
    tokens = locate(TOK, prompt, bind_words(prompt, ["dog"]))
    assert tokens.positions == [[2]] and tokens.n_tokens == 84
    # words 76..84 are cut: the last 6 "red" and "hat"
    assert tokens.truncated == " ".join(["red"] * 8) + " hat"
    assert len(TOK.encode(prompt)) - WORD_TOKENS == 9


def test_a_subject_in_the_cut_part_is_refused():
    prompt = "a dog and " + " ".join(["red"] * 80) + " hat"
    with pytest.raises(UserError, match=r"the prompt is 84 CLIP tokens; CLIP keeps the first 75, and subject word "
                                        r"'hat' \(tokens 84–84\) falls in the part that is cut: 'red red"):
        positions(prompt, ["dog", "hat"])


def test_the_last_kept_word_is_still_a_subject():
    prompt = " ".join(["red"] * 74) + " hat and more words"
    assert positions(prompt, ["hat"]) == [[75]]  # slot 75 is the last word slot; 76 holds the end of text


def test_a_fitting_prompt_has_nothing_cut():
    assert locate(TOK, "a dog", [(2, 5)]).truncated is None
