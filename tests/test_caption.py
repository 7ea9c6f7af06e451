import numpy as np
import pytest
import torch

from lambda_eclipse.models.tiny_vocab import NOUNS
from storage.sample import Reject, Sample, SourceRef
from tasks.caption import Caption
from tasks.config import BuildConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")




def make_sample(key, image):
    sample = Sample(key=key, source="s", ref=SourceRef("x"))
    sample.image = image
    return sample


def photos():
    """Noise and gradients of assorted sizes, as uint8 HxWx3."""
    rng = np.random.default_rng(1)
    noise = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(64, 64), (80, 50), (33, 130)]]
    yy, xx = np.mgrid[0:64, 0:96]
    gradient = np.stack([xx * 2 % 256, yy * 3 % 256, (xx + yy) % 256], -1).astype(np.uint8)
    return [*noise, gradient]


@pytest.fixture(scope="module")
def stage():
    cfg = BuildConfig()
    cfg.runtime.device = "cpu"
    return Caption.create(cfg, "tiny")


def test_stage_contract(stage, monkeypatch):
    assert Caption.name == "caption" and Caption.uses_model
    monkeypatch.setattr(stage.caption, "batch_size", 5)
    assert stage.batch_size == 5
    assert stage.model_id == "tiny-blip2"


def test_captions_every_live_sample_with_vocabulary_nouns(stage):
    samples = [make_sample(str(i), image) for i, image in enumerate(photos())]
    stage(samples)
    for sample in samples:
        assert sample.accepted and sample.caption is not None
        assert sample.caption == sample.caption.strip()
        assert 3 <= len(sample.caption.split()) and set(sample.caption.split()) <= set(NOUNS)
        assert sample.seconds["caption"] > 0


def test_max_new_tokens_comes_from_the_config(stage, monkeypatch):
    monkeypatch.setattr(stage.caption, "max_new_tokens", 2)
    samples = [make_sample(str(i), image) for i, image in enumerate(photos())]
    stage(samples)
    assert all(s.caption is not None and len(s.caption.split()) == 2 for s in samples)


def test_only_special_tokens_decode_empty_and_reject(stage, monkeypatch):
    # Let the model generate nothing but EOS: suppress every word token.
    gen = stage.model.language_model.generation_config
    words = stage.processor.tokenizer.convert_tokens_to_ids(list(NOUNS))
    monkeypatch.setattr(gen, "suppress_tokens", [*gen.suppress_tokens, *words])
    monkeypatch.setattr(gen, "min_new_tokens", None)
    samples = [make_sample(str(i), image) for i, image in enumerate(photos()[:2])]
    stage(samples)
    assert [s.reject for s in samples] == [Reject("caption", "empty caption")] * 2
    assert all(s.caption is None for s in samples)


def test_empty_caption_rejects_only_that_sample(stage, monkeypatch):
    real_generate = stage.model.generate

    def second_row_special_only(**kwargs):
        ids = real_generate(**kwargs)
        ids[1] = stage.processor.tokenizer.pad_token_id
        ids[1, 1] = stage.processor.tokenizer.eos_token_id
        return ids

    monkeypatch.setattr(stage.model, "generate", second_row_special_only)
    samples = [make_sample(str(i), image) for i, image in enumerate(photos()[:3])]
    stage(samples)
    assert [s.accepted for s in samples] == [True, False, True]
    assert samples[1].reject == Reject("caption", "empty caption")
    assert samples[0].caption and samples[2].caption


def test_rejected_samples_are_untouched(stage):
    done = make_sample("rejected", None)  # a decode reject has no image: the stage must not look at it
    done.reject_at("decode", "corrupt")
    live = make_sample("live", photos()[0])
    stage([done, live])
    assert done.reject == Reject("decode", "corrupt") and done.caption is None and "caption" not in done.seconds
    assert live.accepted and live.caption


def test_batched_captions_match_one_by_one(stage):
    images = photos()
    batched = [make_sample(str(i), image) for i, image in enumerate(images)]
    stage(batched)
    for sample, image in zip(batched, images):
        alone = make_sample("alone", image)
        stage([alone])
        assert alone.caption == sample.caption


def test_pixel_values_follow_the_model_dtype():
    cfg = BuildConfig()
    cfg.runtime.device, cfg.runtime.dtype = "cpu", "bfloat16"
    stage = Caption.create(cfg, "tiny")
    assert stage.model.dtype == torch.bfloat16
    sample = make_sample("bf16", photos()[0])
    stage([sample])
    assert sample.accepted and sample.caption
