import json
import tarfile

import numpy as np
import pytest
import torch

from storage.layout import shard_paths
from storage.sample import Detection, Sample, SourceRef
from storage.schema import feature_schema
from storage.shard_writer import ShardWriter
from storage.synthetic_features import featured_sample
from tasks.config import BuildConfig
from tasks.features import ClipFeatures

LONG_MIDDLE = "and a very long story " * 20  # pushes what follows past the 77-token context


def make_sample(key: str, caption: str, nouns: list[str], seed: int = 0) -> Sample:
    """An accepted sample as the crops and edge stages leave it; each noun's first occurrence is a subject."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    subjects = []
    for noun in nouns:
        start = caption.index(noun)
        subjects.append(
            Detection(
                noun=noun, start=start, end=start + len(noun), box=np.array([0, 0, 10, 10], np.float32), logit=0.9,
                crop=rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
            )
        )
    return Sample(
        key=key, source=f"{key}.jpg", ref=SourceRef(f"{key}.jpg"), image=image, caption=caption,
        subjects=subjects, edge=rng.integers(0, 2, image.shape, dtype=np.uint8) * 255,
    )


def make_stage(**subjects) -> ClipFeatures:
    cfg = BuildConfig()
    cfg.runtime.device = "cpu"
    for key, value in subjects.items():
        setattr(cfg.subjects, key, value)
    return ClipFeatures.create(cfg, "tiny")


@pytest.fixture(scope="module")
def stage():
    return make_stage()


def test_stage_contract(stage):
    cfg = BuildConfig()
    cfg.features.batch_size = 7
    assert ClipFeatures.name == "features" and ClipFeatures.uses_model
    assert ClipFeatures.batch_size_for(cfg) == 7


def test_features_shapes_dtypes_and_positions(stage):
    samples = [
        make_sample("a", "a dog and a cat on a sofa", ["dog", "cat"], 1),
        make_sample("b", "a Bird, flying", ["Bird"], 2),
    ]
    stage(samples)
    d, w = stage.clip.embed_dim, stage.clip.text_width
    expected = {
        "target_embedding": ((d,), np.float32),
        "edge_embedding": ((d,), np.float32),
        "text_hidden_states": ((77, w), np.float16),
        "text_embedding": ((d,), np.float32),
        "token_ids": ((77,), np.int32),
        "attention_mask": ((77,), np.int8),
    }
    for sample in samples:
        assert sample.accepted
        assert {k: (v.shape, v.dtype) for k, v in sample.features.items()} == expected
        for det in sample.subjects:
            assert det.embedding is not None
            assert (det.embedding.shape, det.embedding.dtype) == ((d,), np.float32)
    assert [det.token_positions for det in samples[0].subjects] == [[2], [5]]
    assert samples[1].subjects[0].token_positions == [2]
    ids = samples[0].features["token_ids"]
    assert stage.clip.tokenizer.decode(ids[[2, 5]].tolist()).split() == ["dog", "cat"]
    assert samples[0].features["attention_mask"].sum() == 10  # <sot> + 8 words + <eot>


def test_features_match_the_encoders(stage):
    """Each embedding lands on its own sample and subject, after the one batched forward."""
    samples = [make_sample("a", "a dog and a cat", ["dog", "cat"], 3), make_sample("b", "one tree", ["tree"], 4)]
    stage(samples)
    clip = stage.clip
    for sample in samples:
        target, edge = clip.encode_images([sample.image, sample.edge])
        np.testing.assert_allclose(sample.features["target_embedding"], target, atol=1e-5)
        np.testing.assert_allclose(sample.features["edge_embedding"], edge, atol=1e-5)
        for det in sample.subjects:
            assert det.embedding is not None
            np.testing.assert_allclose(det.embedding, clip.encode_images([det.crop])[0], atol=1e-5)
        hidden, pooled, ids, mask = clip.encode_text([sample.caption])
        np.testing.assert_allclose(sample.features["text_embedding"], pooled[0], atol=1e-5)
        np.testing.assert_allclose(sample.features["text_hidden_states"], hidden[0], atol=1e-2)
        np.testing.assert_array_equal(sample.features["token_ids"], ids[0])
        np.testing.assert_array_equal(sample.features["attention_mask"], mask[0])


def test_truncated_subject_dropped(stage):
    caption = "a dog " + LONG_MIDDLE + "and a cat"
    sample = make_sample("a", caption, ["dog", "cat"])
    stage([sample])
    assert sample.accepted
    assert [det.noun for det in sample.subjects] == ["dog"]
    assert sample.subjects[0].embedding is not None
    start = caption.index("cat")
    (dropped,) = sample.dropped_subjects
    assert dropped["noun"] == "cat" and dropped["span"] == [start, start + 3] and dropped["stage"] == "features"
    assert dropped["reason"].startswith("tokens [") and dropped["reason"].endswith("caption truncated at 77 tokens")


def test_dropped_subjects_reach_the_sample_json_and_the_shard_stats(stage, tmp_path):
    truncated = make_sample("a", "a dog " + LONG_MIDDLE + "and a cat", ["dog", "cat"])
    stage([truncated])
    writer = ShardWriter(tmp_path, 0, feature_schema(8, 8), 0.8, ["features"])
    samples = [featured_sample("k0"), featured_sample("k1")]
    samples[0].dropped_subjects = truncated.dropped_subjects  # what the stage recorded, on a writable sample
    for sample in samples:
        writer.add(sample)
    stats = writer.close({"description": "test"})
    assert stats["dropped_subjects"] == 1 and stats["accepted"] == 2
    with tarfile.open(shard_paths(tmp_path, 0)["tar"]) as tar:
        records = {m.name: json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")}  # pyright: ignore[reportOptionalMemberAccess]
    assert records["k0.json"]["dropped_subjects"] == truncated.dropped_subjects
    assert records["k1.json"]["dropped_subjects"] == []


@pytest.mark.parametrize("name, expected", [("auto", torch.float32), ("float16", torch.float16)])
def test_stage_loads_clip_in_the_configured_dtype_not_the_runtime_one(name, expected):
    cfg = BuildConfig()
    cfg.runtime.device, cfg.runtime.dtype, cfg.features.dtype = "cpu", "bfloat16", name
    stage = ClipFeatures.create(cfg, "tiny")
    assert stage.dtype == stage.clip.dtype == expected
    assert {p.dtype for p in stage.clip.model.parameters()} == {expected}
    sample = make_sample("a", "a dog and a cat", ["dog", "cat"])
    stage([sample])
    assert sample.accepted and sample.features["target_embedding"].dtype == np.float32
    assert np.isfinite(sample.features["target_embedding"]).all()


def test_too_few_subjects_left_rejects_with_reason():
    stage = make_stage(min_subjects=2)
    rejected = make_sample("a", "a dog " + LONG_MIDDLE + "and a cat", ["dog", "cat"])
    kept = make_sample("b", "a dog and a cat", ["dog", "cat"])
    stage([rejected, kept])
    assert rejected.reject is not None
    assert rejected.reject.stage == "features"
    assert "'cat'" in rejected.reject.reason and "truncated at 77 tokens" in rejected.reject.reason
    assert rejected.features == {}
    assert kept.accepted and len(kept.subjects) == 2 and kept.features


def test_subject_not_on_token_boundaries_dropped(stage):
    sample = make_sample("a", "a hotdog", ["hotdog"])
    sample.subjects[0].start += 3  # "dog" inside "hotdog"
    stage([sample])
    assert sample.reject is not None
    assert sample.reject.stage == "features"
    assert "not whole CLIP tokens" in sample.reject.reason


def test_rejected_samples_untouched(stage):
    sample = make_sample("a", "a dog", ["dog"])
    subjects = sample.subjects
    sample.reject_at("boxes", "no boxes")
    assert sample.image is None and sample.edge is None and sample.subjects == []  # pixels dropped at once
    sample.subjects = subjects
    stage([sample])
    assert sample.features == {} and sample.subjects[0].token_positions == []
