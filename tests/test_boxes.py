import numpy as np
import pytest

from lambda_eclipse.required import required
from storage.sample import Noun, Reject, Sample, SourceRef
from tasks.box_filters import box_problem
from tasks.boxes import Boxes, noun_token_positions, prompt
from tasks.config import BuildConfig


def image(height, width, seed):
    """A vertical gradient with a filled rectangle and noise: enough structure for the detector to differ."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, height)[:, None, None]
    out = rng.integers(0, 255, 3) * (1 - ramp) + rng.integers(0, 255, 3) * ramp
    out = np.repeat(out, width, axis=1)
    y, x = rng.integers(0, height // 2), rng.integers(0, width // 2)
    out[y : y + height // 2, x : x + width // 2] = rng.integers(0, 255, 3)
    return (out + rng.normal(0, 5, out.shape)).clip(0, 255).astype(np.uint8)


def sample(caption, words, img, key="k"):
    nouns, start = [], 0
    for word in words:
        start = caption.index(word, start)
        nouns.append(Noun(word, start, start + len(word)))
        start += len(word)
    return Sample(key=key, source="s", ref=SourceRef("x"), image=img, caption=caption, nouns=nouns)


@pytest.fixture(scope="module")
def stage():
    return Boxes.create(BuildConfig())


def test_positions_are_found_in_prompt_order():
    ids = [2, 10, 11, 5, 12, 5, 10, 11, 5, 3]  # [CLS] a b . c . a b . [SEP]
    assert noun_token_positions(ids, [[10, 11], [12], [10, 11]]) == [[1, 2], [4], [6, 7]]
    assert noun_token_positions(ids, [[12], [99], [10, 11]]) == [[4], [], [6, 7]]  # 99 is not in the prompt


def test_positions_in_a_real_prompt_decode_to_their_nouns(stage):
    s = sample("A Dog, a car and another dog", ["Dog", "car", "dog"], image(96, 128, 0))
    assert prompt(s) == "dog . car . dog ."
    tokenizer = stage.detector.processor.tokenizer
    ids = tokenizer(prompt(s)).input_ids
    noun_ids = [tokenizer(n.text.lower(), add_special_tokens=False).input_ids for n in s.nouns]
    positions = noun_token_positions(ids, noun_ids)
    assert [tokenizer.decode([ids[i] for i in pos]) for pos in positions] == ["dog", "car", "dog"]
    assert positions[0] != positions[2]  # each "dog" maps to its own occurrence


def test_batch_of_differently_sized_images(stage):
    samples = [
        sample("a dog on a sofa", ["dog", "sofa"], image(96, 128, 1), "a"),
        sample("a cat", ["cat"], image(128, 96, 2), "b"),
        sample("a man with a hat and a bike", ["man", "hat", "bike"], image(150, 200, 3), "c"),
    ]
    stage(samples)
    threshold = stage.boxes.box_threshold
    for s in samples:
        assert s.accepted and s.detections and s.image is not None, s.key
        height, width = s.image.shape[:2]
        spans = {(n.text, n.start, n.end) for n in s.nouns}
        for d in s.detections:
            assert (d.noun, d.start, d.end) in spans
            assert d.box.dtype == np.float32 and d.box.shape == (4,)
            x0, y0, x1, y1 = d.box
            assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height
            assert d.logit > threshold
        logits = [d.logit for d in s.detections]
        assert logits == sorted(logits, reverse=True)


def test_each_sample_gets_its_own_outputs_from_a_batch(stage):
    # Same-sized images (so no padding differs between runs) with different nouns: a mix-up of batch rows
    # would show as different labels or boxes than the one-at-a-time runs give.
    def samples():
        return [
            sample("a dog and a cat", ["dog", "cat"], image(96, 128, 7), "a"),
            sample("a tree", ["tree"], image(96, 128, 8), "b"),
            sample("a car near a house", ["car", "house"], image(96, 128, 9), "c"),
        ]

    batched = samples()
    stage(batched)
    for alone, together in zip(samples(), batched):
        stage([alone])
        assert [(d.noun, d.start) for d in alone.detections] == [(d.noun, d.start) for d in together.detections]
        for a, b in zip(alone.detections, together.detections):
            np.testing.assert_allclose(a.box, b.box, atol=0.01)
            assert abs(a.logit - b.logit) < 1e-4


def test_unreachable_threshold_rejects_with_no_boxes_detected():
    cfg = BuildConfig()
    cfg.boxes.box_threshold = 0.99
    s = sample("a dog and a cat", ["dog", "cat"], image(96, 128, 4))
    Boxes.create(cfg)([s])
    assert s.reject == Reject("boxes", "no boxes detected") and s.detections == []


def test_sample_without_nouns_is_rejected(stage):
    s = sample("", [], image(96, 128, 5))
    stage([s])
    assert s.reject == Reject("boxes", "no boxes detected")


def test_tiny_boxes_commonly_pass_the_per_box_filters(stage):
    # The quickstart must yield accepted samples through the real thresholds (the tiny model is shaped for it).
    words = ["dog", "cat", "car", "tree", "person", "house"]
    samples = [
        sample(" ".join(words[i % 3 : i % 3 + 3]), words[i % 3 : i % 3 + 3], image(256, 256 + 32 * (i % 3), 10 + i))
        for i in range(8)
    ]
    stage(samples)
    problems = [box_problem(d, required(s.image, "image").size // 3, stage.boxes)
                for s in samples for d in s.detections]
    assert all(1 <= len(s.detections) <= 6 for s in samples)
    assert sum(p is None for p in problems) / len(problems) > 0.7


def test_bfloat16_runs():
    # The dtype used on CUDA: the model's weights are cast and the forward runs under autocast.
    cfg = BuildConfig()
    cfg.runtime.dtype = "bfloat16"
    s = sample("a dog", ["dog"], image(96, 128, 6))
    Boxes.create(cfg)([s])
    assert s.accepted and all(d.box.dtype == np.float32 for d in s.detections)
