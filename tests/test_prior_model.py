import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from lambda_eclipse.errors import UserError
from prior.model import MASK_VALUE, EclipsePrior, EclipsePriorOutput, prior_config

# Every state-dict key and shape of the released checkpoint (docs/design.md).
REFERENCE_TOP = {
    "positional_embedding": [1, 81, 512], "prd_embedding": [1, 1, 512], "clip_mean": [1, 1280], "clip_std": [1, 1280],
    "proj_in.weight": [512, 1280], "proj_in.bias": [512],
    "embedding_proj.weight": [512, 1280], "embedding_proj.bias": [512],
    "embedding_control.weight": [512, 1280], "embedding_control.bias": [512],
    "encoder_hidden_states_proj.weight": [512, 1280], "encoder_hidden_states_proj.bias": [512],
    "norm_out.weight": [512], "norm_out.bias": [512],
    "proj_to_clip_embeddings.weight": [1280, 512], "proj_to_clip_embeddings.bias": [1280],
}
REFERENCE_BLOCK = {
    "norm1.weight": [512], "norm1.bias": [512],
    "attn1.to_q.weight": [512, 512], "attn1.to_q.bias": [512],
    "attn1.to_k.weight": [512, 512], "attn1.to_k.bias": [512],
    "attn1.to_v.weight": [512, 512], "attn1.to_v.bias": [512],
    "attn1.to_out.0.weight": [512, 512], "attn1.to_out.0.bias": [512],
    "norm3.weight": [512], "norm3.bias": [512],
    "ff.net.0.proj.weight": [2048, 512], "ff.net.0.proj.bias": [2048],
    "ff.net.2.weight": [512, 2048], "ff.net.2.bias": [512],
}
REFERENCE_KEYS = REFERENCE_TOP | {
    f"transformer_blocks.{i}.{k}": shape for i in range(10) for k, shape in REFERENCE_BLOCK.items()
}
REFERENCE_CONFIG = {
    "num_layers": 10, "num_attention_heads": 16, "attention_head_dim": 32, "embedding_dim": 1280, "num_embeddings": 77,
    "additional_embeddings": 4, "added_emb_type": "prd", "encoder_hid_proj_type": "linear", "norm_in_type": None,
}
PAPER_PARAMETERS = 34_849_536


@pytest.fixture(scope="module")
def paper():
    return EclipsePrior(**prior_config("paper")).eval()


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = EclipsePrior.tiny(embedding_dim=32).eval()
    with torch.no_grad():  # positional and prd embeddings start at zero: randomise everything so each weight matters
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def inputs(batch=2, d=32, n_valid=(5, 9), seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.stack([(torch.arange(77) < n).long() for n in n_valid[:batch]])
    return dict(
        hidden_states=torch.randn(batch, d, generator=g),
        proj_embedding=torch.randn(batch, d, generator=g),
        encoder_hidden_states=torch.randn(batch, 77, d, generator=g),
        attention_mask=mask,
        control_embedding=torch.randn(batch, d, generator=g),
    )


def test_paper_config_matches_released_keys_shapes_and_parameter_count(paper):
    assert sum(math.prod(s) for s in REFERENCE_KEYS.values()) == PAPER_PARAMETERS
    assert {k: list(v.shape) for k, v in paper.state_dict().items()} == REFERENCE_KEYS
    assert sum(p.numel() for p in paper.parameters()) == PAPER_PARAMETERS
    assert {k: paper.config[k] for k in REFERENCE_CONFIG} == REFERENCE_CONFIG
    assert {k: EclipsePrior().config[k] for k in REFERENCE_CONFIG} == REFERENCE_CONFIG  # defaults = released config
    # unCLIP's latent statistics are stored but unused: frozen, everything else trains
    assert [n for n, p in paper.named_parameters() if not p.requires_grad] == ["clip_mean", "clip_std"]


def test_forward_shapes(paper, tiny):
    with torch.no_grad():
        out = paper(**inputs(batch=1, d=1280))
    assert isinstance(out, EclipsePriorOutput) and out.predicted_image_embedding.shape == (1, 1280)
    with torch.no_grad():
        tensor = tiny(**inputs(), return_dict=False)
    assert tensor.shape == (2, 32)
    assert torch.equal(tensor, tiny(**inputs()).predicted_image_embedding.detach())


def reference_forward(model, hidden_states, proj_embedding, encoder_hidden_states, attention_mask, control_embedding):
    """The released forward written out with plain tensor ops and a boolean mask: pins the token order and blocks."""
    sd, cfg = model.state_dict(), model.config
    heads, inner = cfg.num_attention_heads, cfg.num_attention_heads * cfg.attention_head_dim
    batch = hidden_states.shape[0]

    def linear(x, name):
        return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]

    def norm(x, name):
        return F.layer_norm(x, (inner,), sd[f"{name}.weight"], sd[f"{name}.bias"])

    x = torch.cat(
        [
            linear(encoder_hidden_states, "encoder_hidden_states_proj"),
            linear(control_embedding, "embedding_control")[:, None],
            linear(proj_embedding, "embedding_proj")[:, None],
            linear(hidden_states, "proj_in")[:, None],
            sd["prd_embedding"].expand(batch, 1, inner),
        ],
        dim=1,
    ) + sd["positional_embedding"]
    length = x.shape[1]
    keys_visible = torch.cat([attention_mask.bool(), torch.ones(batch, 4, dtype=torch.bool)], dim=1)
    allowed = torch.ones(length, length, dtype=torch.bool).tril()[None] & keys_visible[:, None, :]
    for i in range(cfg.num_layers):
        block = f"transformer_blocks.{i}"
        h = norm(x, f"{block}.norm1")
        q, k, v = (linear(h, f"{block}.attn1.to_{c}").view(batch, length, heads, -1).transpose(1, 2) for c in "qkv")
        scores = (q @ k.transpose(-1, -2) / math.sqrt(cfg.attention_head_dim)).masked_fill(~allowed[:, None], -math.inf)
        attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, inner)
        x = x + linear(attended, f"{block}.attn1.to_out.0")
        h = F.gelu(linear(norm(x, f"{block}.norm3"), f"{block}.ff.net.0.proj"))
        x = x + linear(h, f"{block}.ff.net.2")
    return linear(norm(x[:, -1], "norm_out"), "proj_to_clip_embeddings")


def test_forward_matches_plain_reference(tiny):
    batch = inputs()
    with torch.no_grad():
        assert torch.allclose(tiny(**batch).predicted_image_embedding, reference_forward(tiny, **batch), atol=1e-5)


def test_attention_bias_is_causal_plus_padding(tiny):
    mask = torch.tensor([[1] * 5 + [0] * 72, [1] * 77])
    bias = tiny.attention_bias(mask, torch.float32)
    assert bias.shape == (2 * 2, 81, 81)
    assert torch.equal(bias[0], bias[1]) and torch.equal(bias[2], bias[3])  # per head, batch-major
    causal = torch.full((81, 81), MASK_VALUE).triu(1)
    assert torch.equal(bias[2], causal)  # no padding: causal only
    padding = torch.zeros(81)
    padding[5:77] = MASK_VALUE  # padded text keys; the 4 extra tokens are never masked
    assert torch.equal(bias[0], causal + padding)


def test_padded_text_positions_do_not_reach_the_output(tiny):
    batch = inputs(n_valid=(5, 9))
    with torch.no_grad():
        base = tiny(**batch).predicted_image_embedding
        padded = dict(batch, encoder_hidden_states=batch["encoder_hidden_states"].clone())
        padded["encoder_hidden_states"][0, 5:] += 10.0  # sample 0's padding
        padded["encoder_hidden_states"][1, 40] -= 10.0  # sample 1's padding
        assert torch.allclose(tiny(**padded).predicted_image_embedding, base, atol=1e-6)
        valid = dict(batch, encoder_hidden_states=batch["encoder_hidden_states"].clone())
        valid["encoder_hidden_states"][0, 4] += 1.0  # a real token of sample 0
        changed = tiny(**valid).predicted_image_embedding
    assert not torch.allclose(changed[0], base[0], atol=1e-3)
    assert torch.allclose(changed[1], base[1], atol=1e-6)  # samples stay independent


@pytest.mark.parametrize("name", ["hidden_states", "proj_embedding", "control_embedding"])
def test_every_extra_token_reaches_the_output(tiny, name):
    batch = inputs()
    with torch.no_grad():
        base = tiny(**batch).predicted_image_embedding
        changed = tiny(**dict(batch, **{name: batch[name] + 1.0})).predicted_image_embedding
    assert not torch.allclose(changed, base, atol=1e-3)


def test_save_and_load_round_trip(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert json.loads((tmp_path / "config.json").read_text())["embedding_dim"] == 32
    loaded = EclipsePrior.from_pretrained(tmp_path)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.config) == public(tiny.config) and not loaded.clip_mean.requires_grad
    batch = inputs()
    with torch.no_grad():
        assert torch.equal(loaded(**batch).predicted_image_embedding, tiny(**batch).predicted_image_embedding)


def test_loads_a_checkpoint_saved_by_the_released_class(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config |= {"_class_name": "PriorTransformer", "_diffusers_version": "0.25.0"}  # what the released code writes
    (tmp_path / "config.json").write_text(json.dumps(config))
    batch = inputs()
    with torch.no_grad():
        loaded = EclipsePrior.from_pretrained(tmp_path)(**batch).predicted_image_embedding
        assert torch.equal(loaded, tiny(**batch).predicted_image_embedding)


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda sd: sd.pop("embedding_control.weight"), "embedding_control.weight"),
        (lambda sd: sd.update({"time_embedding.linear_1.weight": torch.zeros(4)}), "time_embedding.linear_1.weight"),
    ],
    ids=["missing", "unexpected"],
)
def test_loading_is_strict(tiny, tmp_path, edit, key):
    tiny.save_pretrained(tmp_path)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    edit(state)
    save_file(state, weights)
    with pytest.raises(ValueError, match=key) as error:
        EclipsePrior.from_pretrained(tmp_path)
    assert str(weights) in str(error.value)


@pytest.mark.parametrize(
    "override",
    [
        {"additional_embeddings": 3},
        {"added_emb_type": None},
        {"encoder_hid_proj_type": None},
        {"norm_in_type": "rms"},
        {"embedding_proj_norm_type": "batch"},
        {"num_layers": 0},
        {"dropout": 1.5},
        {"clip_embed_dim": -1},
    ],
)
def test_unsupported_config_is_rejected(override):
    name = next(iter(override))
    with pytest.raises(ValueError, match=name):
        EclipsePrior(**{**prior_config("tiny"), **override})


def test_profiles():
    assert prior_config("paper") == prior_config("paper-shapes") == REFERENCE_CONFIG
    assert prior_config("tiny", embedding_dim=48)["embedding_dim"] == 48
    with pytest.raises(UserError, match="unknown profile 'huge' for the prior; choose one of: tiny, paper"):
        prior_config("huge")
