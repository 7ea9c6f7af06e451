import numpy as np
import pytest
import torch

from lambda_eclipse.config import ModelsSection
from lambda_eclipse.errors import ModelNotFoundError
from lambda_eclipse.models.blip2 import SPECIAL_TOKENS, build_paper_shapes, build_random, load_blip2
from lambda_eclipse.models.tiny_vocab import NOUNS

CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_torch_thread")




def synthetic_images():
    """Noise, gradients and flat colours of assorted sizes, as uint8 HxWx3."""
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(64, 64), (48, 96), (120, 40)]]
    yy, xx = np.mgrid[0:64, 0:64]
    gradients = [
        np.stack([xx * a % 256, yy * b % 256, (xx + yy) * c % 256], -1).astype(np.uint8)
        for a, b, c in [(1, 2, 3), (4, 1, 2)]
    ]
    flat = [np.full((64, 64, 3), v, np.uint8) for v in (0, 128, 255)]
    return noise + gradients + flat


def caption(bundle, images):
    inputs = bundle.processor(images=images, text=[""] * len(images), return_tensors="pt")
    with torch.inference_mode():
        ids = bundle.model.generate(**inputs, max_new_tokens=30)
    return bundle.processor.batch_decode(ids, skip_special_tokens=True)


@pytest.fixture(scope="module")
def tiny():
    return load_blip2("tiny", ModelsSection(), CPU, torch.float32)


def test_tiny_builds_identically(tiny):
    again = load_blip2("tiny", ModelsSection(), CPU, torch.float32)
    first, second = tiny.model.state_dict(), again.model.state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not tiny.model.training


def test_tiny_tokenizer_is_the_noun_vocabulary(tiny):
    tok = tiny.processor.tokenizer
    assert tok.convert_ids_to_tokens(list(range(len(SPECIAL_TOKENS) + len(NOUNS)))) == [*SPECIAL_TOKENS, *NOUNS]
    assert tiny.model.config.image_token_index == tok.convert_tokens_to_ids("<image>")


def test_tiny_captions_are_several_distinct_vocabulary_nouns(tiny):
    captions = caption(tiny, synthetic_images())
    for text in captions:
        words = text.split()
        assert 3 <= len(words) <= 10, text
        assert set(words) <= set(NOUNS), text
        assert len(set(words)) == len(words), text
    assert len(set(captions)) >= len(captions) // 2  # the caption depends on the image


def test_tiny_captions_depend_only_on_the_image(tiny):
    images = synthetic_images()
    assert caption(tiny, images[:1]) + caption(tiny, images[1:2]) == caption(tiny, images[:2])


def test_paper_profile_missing_weights_names_the_model_and_the_fix(tmp_path):
    missing = str(tmp_path / "no-blip2-here")
    with pytest.raises(ModelNotFoundError) as info:
        load_blip2("paper", ModelsSection(blip2=missing), CPU, torch.float32)
    message = str(info.value)
    assert info.value.model == "BLIP-2"
    assert missing in message
    assert "Salesforce/blip2-flan-t5-xl" in message and "models.blip2=" in message


def test_paper_shapes_has_the_paper_size_on_meta():
    model, processor = build_paper_shapes(torch.device("meta"), torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) == 3_942_446_592
    fp32 = {name for name, p in model.named_parameters() if p.dtype == torch.float32}
    assert fp32 and all(name == "query_tokens" or name.startswith("qformer.") for name in fp32)
    assert model.language_model.shared.weight.dtype == torch.bfloat16
    assert model.vision_model.embeddings.patch_embedding.weight.dtype == torch.bfloat16
    lm = model.language_model
    assert lm.lm_head.weight is not lm.shared.weight  # flan-t5-xl's own lm_head
    assert lm.decoder.embed_tokens.weight is lm.shared.weight
    from transformers import T5Config

    text_config = model.config.text_config
    assert isinstance(text_config, T5Config)
    assert len(processor.tokenizer) == text_config.vocab_size == 32128
    assert processor.image_processor.size == {"height": 224, "width": 224}


def test_build_random_fills_every_parameter(tiny):
    model = build_random(tiny.model.config, CPU, torch.bfloat16)
    params = dict(model.named_parameters())
    assert {p.dtype for p in params.values()} == {torch.bfloat16}
    assert all(torch.isfinite(p).all() for p in params.values())
    assert model.language_model.encoder.embed_tokens.weight is model.language_model.shared.weight
    weights = torch.cat([p.float().flatten() for p in params.values() if p.ndim > 1])
    assert abs(weights.std().item() - 0.02) < 0.002
    assert torch.all(params["vision_model.post_layernorm.weight"] == 1)
    assert torch.all(params["vision_model.post_layernorm.bias"] == 0)
