import pytest
import torch

from lambda_eclipse.config import ModelsSection
from lambda_eclipse.errors import ModelNotFoundError
from lambda_eclipse.models.grounding_dino import load_grounding_dino
from lambda_eclipse.models.tiny_vocab import NOUNS

CPU = torch.device("cpu")


def load(profile, **models):
    return load_grounding_dino(profile, ModelsSection(**models), CPU, torch.float32)


def test_tiny_builds_identically_twice():
    a, b = load("tiny").model.state_dict(), load("tiny").model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tiny_build_leaves_the_callers_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    load("tiny")
    assert torch.equal(torch.rand(3), expected)


def test_tiny_tokenizer_knows_every_captioner_word_and_the_separator_as_one_token():
    tokenizer = load("tiny").processor.tokenizer
    for word in (*NOUNS, "."):
        ids = tokenizer(word, add_special_tokens=False).input_ids
        assert len(ids) == 1 and ids[0] != tokenizer.unk_token_id, word


def test_tiny_box_head_shaping_reaches_every_decoder_layer():
    # The box head is tied across decoder layers: the shaped bias must be the one every layer uses.
    model = load("tiny").model
    # (transformers declares decoder.bbox_embed as None; GroundingDinoForObjectDetection sets it to its heads)
    heads = [*model.bbox_embed, *model.model.decoder.bbox_embed]  # pyright: ignore[reportGeneralTypeIssues]
    assert len(heads) == 4
    assert all(h.layers[-1].bias.data_ptr() == heads[0].layers[-1].bias.data_ptr() for h in heads)
    assert heads[0].layers[-1].bias[2:].min() > 1


@pytest.mark.parametrize("name", ["/nonexistent/grounding-dino", "IDEA-Research/grounding-dino-tiny"])
def test_paper_without_weights_names_the_model_and_the_fix(name):
    with pytest.raises(ModelNotFoundError) as info:
        load("paper", grounding_dino=name)
    message = str(info.value)
    assert name in message
    assert "hf download IDEA-Research/grounding-dino-tiny" in message
    assert "models.grounding_dino=/local/dir" in message


def test_paper_shapes_is_the_swin_t_ogc_model_with_a_bert_base_vocabulary():
    from transformers import BertConfig, SwinConfig

    bundle = load("paper-shapes")
    config = bundle.model.config
    backbone, text = config.backbone_config, config.text_config
    assert isinstance(backbone, SwinConfig) and isinstance(text, BertConfig)
    assert backbone.embed_dim == 96
    assert list(backbone.depths) == [2, 2, 6, 2]
    assert (config.d_model, config.num_queries, config.encoder_layers, config.decoder_layers) == (256, 900, 6, 6)
    assert text.hidden_size == 768 and text.num_hidden_layers == 12
    # IDEA-Research/grounding-dino-tiny has 172M parameters.
    assert round(sum(p.numel() for p in bundle.model.parameters()) / 1e6) == 172
    assert len(bundle.processor.tokenizer) == 30522
    assert bundle.processor.image_processor.size.shortest_edge == 800
