import numpy as np
import pytest
import torch
from PIL import Image

from lambda_eclipse.config import ModelsSection
from lambda_eclipse.errors import ModelNotFoundError, UserError
from lambda_eclipse.models.clip import CONTEXT_LENGTH, load_clip

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def clip():
    return load_clip("tiny", ModelsSection(), CPU, torch.float32)


def smooth_image(shape, seed=0):
    """Random but smooth (upsampled noise), so that resampling differences stay small."""
    rng = np.random.default_rng(seed)
    h, w = shape
    small = Image.fromarray(rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8))
    return np.asarray(small.resize((w, h), Image.Resampling.BICUBIC))


def words_at(clip, text, positions):
    """Decode the untruncated token sequence (start-of-text first) at `positions`."""
    ids = [clip.tokenizer.sot_token_id, *clip.tokenizer.encode(text)]
    return clip.tokenizer.decode([ids[p] for p in positions]).strip()


def span(text, word, occurrence=0):
    start = -1
    for _ in range(occurrence + 1):
        start = text.index(word, start + 1)
    return start, start + len(word)


@pytest.mark.parametrize(
    ("text", "word", "occurrence", "expected"),
    [
        ("a dog on a sofa", "dog", 0, [2]),  # <sot> a dog
        ("a hippopotamus in water", "hippopotamus", 0, [2, 3, 4]),  # BPE: hippo potam us
        ("a dog and a dog", "dog", 1, [5]),  # the second occurrence, not the first
        ("a dog, a cat", "dog", 0, [2]),
        ("a (dog) sleeps", "dog", 0, [3]),  # "(" is its own token
        ("A Dog on a Sofa", "Dog", 0, [2]),  # the tokenizer lower-cases
        ("  a   dog\n on a sofa", "dog", 0, [2]),  # whitespace is collapsed
        ("the dog's bone", "dog", 0, [2]),  # 's is its own token
        ("fish &amp; chips", "chips", 0, [3]),  # HTML entities are unescaped before tokenizing
        ("the caf\u00e9\u2019s dog", "dog", 0, [4]),  # non-ASCII letters; the curly \u2019s becomes 's
    ],
)
def test_token_positions_known_answers(clip, text, word, occurrence, expected):
    positions = clip.token_positions(text, *span(text, word, occurrence))
    assert positions == expected
    assert words_at(clip, text, positions) == word.lower()
    # Within the context, the model's own tokenization holds the word there.
    ids = clip.tokenizer([text])[0]
    assert clip.tokenizer.decode(ids[positions].tolist()).strip() == word.lower()


def test_token_positions_multi_token_word_is_split(clip):
    assert len(clip.tokenizer.encode("hippopotamus")) == 3


def test_token_positions_beyond_context_returned_as_is(clip):
    text = "a dog " + "and a very long story " * 20 + "about a cat"
    start, end = span(text, "cat")
    positions = clip.token_positions(text, start, end)
    assert positions == [len(clip.tokenizer.encode(text))]  # the last word: <sot> + all tokens before it
    assert positions[0] >= CONTEXT_LENGTH
    assert words_at(clip, text, positions) == "cat"


def test_token_positions_rejects_spans_inside_words(clip):
    text = "a hotdog and dogs"
    with pytest.raises(ValueError, match="not a whole-token"):
        clip.token_positions(text, *span(text, "dog"))  # inside "hotdog"
    with pytest.raises(ValueError, match="not a whole-token"):
        clip.token_positions(text, *span(text, "dog", 1))  # inside "dogs"
    with pytest.raises(ValueError, match="not inside"):
        clip.token_positions(text, 5, 100)
    with pytest.raises(ValueError, match="no tokens"):
        clip.token_positions(text, 1, 2)  # a space


def test_encode_text_shapes_and_consistency(clip):
    long_text = "word " * 100
    hidden, pooled, ids, mask = clip.encode_text(["a dog", long_text])
    d, w = clip.embed_dim, clip.text_width
    assert (hidden.shape, hidden.dtype) == ((2, CONTEXT_LENGTH, w), np.float32)
    assert (pooled.shape, pooled.dtype) == ((2, d), np.float32)
    assert (ids.shape, ids.dtype) == ((2, CONTEXT_LENGTH), np.int64)
    assert (mask.shape, mask.dtype) == ((2, CONTEXT_LENGTH), np.int64)
    eot = clip.tokenizer.eot_token_id
    assert ids[0, :4].tolist() == [clip.tokenizer.sot_token_id, *clip.tokenizer.encode("a dog"), eot]
    assert mask[0].tolist() == [1] * 4 + [0] * (CONTEXT_LENGTH - 4)  # up to and including EOT
    assert ids[1, -1] == eot and mask[1].all()  # truncated: EOT in the last slot
    # pooled is open_clip's own (unnormalized) text embedding, the EOT hidden state projected.
    with torch.no_grad():
        reference = clip.model.encode_text(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(pooled, reference, atol=1e-5)
    projection = clip.model.text_projection.detach().numpy()
    np.testing.assert_allclose(hidden[[0, 1], [3, 76]] @ projection, pooled, atol=1e-5)


def test_encode_images_shapes_determinism_and_batching(clip):
    images = [smooth_image((100, 137), 1), smooth_image((224, 224), 2), smooth_image((37, 50), 3)]
    batch = clip.encode_images(images)
    assert (batch.shape, batch.dtype) == ((3, clip.embed_dim), np.float32)
    np.testing.assert_array_equal(clip.encode_images(images[:1]), clip.encode_images(images[:1]))
    single = np.concatenate([clip.encode_images([image]) for image in images])
    np.testing.assert_allclose(batch, single, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        clip.encode_images([np.zeros((8, 8), np.uint8)])


@pytest.mark.parametrize("shape", [(100, 137), (301, 77), (56, 56), (20, 30), (700, 1050)])
def test_preprocessing_matches_open_clip_eval_transform(clip, shape):
    import open_clip  # after lambda_eclipse.models, which makes torchvision importable on CPU torch

    image = smooth_image(shape)
    transform = open_clip.image_transform(clip.image_size, is_train=False)
    assert callable(transform)  # one Compose (typed as that or a tuple of them)
    reference = transform(Image.fromarray(image))
    assert isinstance(reference, torch.Tensor)
    reference = reference[None]
    ours = clip._preprocess(image)
    assert ours.shape == reference.shape
    # In 8-bit levels: PIL rounds between its two resize passes, torch resizes in one float pass.
    levels = (ours - reference).abs() * clip._std * 255
    assert levels.max().item() <= 4 and levels.mean().item() < 0.5


def test_tiny_builds_identically():
    a = load_clip("tiny", ModelsSection(), CPU, torch.float32).model.state_dict()
    b = load_clip("tiny", ModelsSection(), CPU, torch.float32).model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tiny_dimensions(clip):
    assert clip.embed_dim == clip.text_width == 32
    assert clip.image_size == 56
    assert "tiny" in clip.model_id


def test_zero_image_embedding(clip):
    zero = clip.zero_image_embedding()
    assert (zero.shape, zero.dtype) == ((clip.embed_dim,), np.float32)
    np.testing.assert_array_equal(zero, clip.zero_image_embedding())
    with torch.no_grad():
        reference = clip.model.encode_image(torch.zeros(1, 3, 56, 56))[0].numpy()
    np.testing.assert_array_equal(zero, reference)


def test_paper_missing_local_weights(tmp_path):
    models = ModelsSection(clip_pretrained=str(tmp_path / "missing.bin"))
    with pytest.raises(ModelNotFoundError) as err:
        load_clip("paper", models, CPU, torch.float32)
    message = str(err.value)
    assert "ViT-bigG-14" in message and "missing.bin" in message
    assert "models.clip_pretrained" in message  # the fix


def test_unknown_profile():
    with pytest.raises(UserError, match="unknown profile"):
        load_clip("huge", ModelsSection(), CPU, torch.float32)


def test_bfloat16_weights_give_float32_outputs_close_to_float32(clip):
    low = load_clip("tiny", ModelsSection(), CPU, torch.bfloat16)
    assert next(low.model.parameters()).dtype == torch.bfloat16
    image = smooth_image((64, 80))
    embedding = low.encode_images([image])
    assert embedding.dtype == np.float32
    np.testing.assert_allclose(embedding, clip.encode_images([image]), rtol=0.02, atol=0.05)
    hidden, pooled, _, _ = low.encode_text(["a dog"])
    assert hidden.dtype == pooled.dtype == np.float32
    np.testing.assert_allclose(pooled, clip.encode_text(["a dog"])[1], rtol=0.02, atol=0.05)
    assert low.zero_image_embedding().dtype == np.float32


def test_float16_weights_round_the_embeddings_less_than_bfloat16(clip):
    # why features.dtype=auto picks float16 on cuda: fp16 keeps 11 mantissa bits to bf16's 8
    image = smooth_image((64, 80))
    reference = clip.encode_images([image])[0]
    errors = {}
    for dtype in (torch.float16, torch.bfloat16):
        low = load_clip("tiny", ModelsSection(), CPU, dtype)
        assert next(low.model.parameters()).dtype == dtype
        errors[dtype] = float(np.abs(low.encode_images([image])[0] - reference).max())
    assert 0 < errors[torch.float16] < errors[torch.bfloat16] / 2
