"""The λ-ECLIPSE prior (paper §3, Appendix C) in the layout of its released checkpoint.

The released model (`ECLIPSE-Community/Lambda-ECLIPSE-Prior-v1.0`) is diffusers' `PriorTransformer` without the
time embedding (it is not a diffusion prior) plus `embedding_control`, a projection of the edge-map CLIP embedding.
Its parameter names and shapes are kept exactly, so the released `config.json` +
`diffusion_pytorch_model.safetensors` load into `EclipsePrior`, and checkpoints saved here have the released layout.

Sequence (num_embeddings + 4 tokens, 81 with the paper config):
    77 projected text states | control token | projected pooled text | projected input token (ε) | learned prd token
The prediction is read from the prd token, which the causal mask lets attend to every other token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.outputs import BaseOutput
from torch import nn

from lambda_eclipse.compat import ensure_torchvision_ops
from lambda_eclipse.profile import Profile, pick

# The released config.json names its class "PriorTransformer": diffusers then imports its own PriorTransformer, whose
# import chain reaches torchvision, which fails on CPU-only torch without this.
ensure_torchvision_ops()

EXTRA_TOKENS = 4  # control, pooled text, input, prd: fixed by the token order above
MASK_VALUE = -10000.0  # additive attention bias of the released model (finite, so fp16 and fully masked rows stay safe)

_PAPER = dict(
    num_layers=10, num_attention_heads=16, attention_head_dim=32, embedding_dim=1280, num_embeddings=77,
    additional_embeddings=4, added_emb_type="prd", encoder_hid_proj_type="linear", norm_in_type=None,
)
_TINY = {**_PAPER, "num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 8, "embedding_dim": 32}
CONFIGS = {Profile.TINY: _TINY, Profile.PAPER: _PAPER, Profile.PAPER_SHAPES: _PAPER}  # the prior of each profile


def prior_config(profile: str = Profile.PAPER, embedding_dim: int | None = None) -> dict:
    """Constructor arguments of `EclipsePrior` for a model profile (docs/design.md, "Model profiles").

    `paper` and `paper-shapes` are the released config (10 layers, 16 heads × 32, d = 1280; 34,849,536 parameters);
    `tiny` is 2 layers of 2 heads × 8 on d = 32 for tests. `embedding_dim` overrides d, to match the CLIP in use.
    """
    config = dict(pick(CONFIGS, profile, "the prior"))
    if embedding_dim is not None:
        config["embedding_dim"] = embedding_dim
    return config


@dataclass
class EclipsePriorOutput(BaseOutput):
    """`predicted_image_embedding`: (B, clip_embed_dim) estimated CLIP image embedding ẑ_x."""

    predicted_image_embedding: torch.Tensor


class EclipsePrior(ModelMixin, ConfigMixin):
    """f_θ(ε, z_y, z_xk, z_c) → ẑ_x of Eq. 1. Defaults are the released (paper) config."""

    @register_to_config
    def __init__(
        self,
        num_attention_heads: int = 16,
        attention_head_dim: int = 32,
        num_layers: int = 10,
        embedding_dim: int = 1280,
        num_embeddings: int = 77,
        additional_embeddings: int = 4,
        dropout: float = 0.0,
        norm_in_type: str | None = None,
        embedding_proj_norm_type: str | None = None,
        encoder_hid_proj_type: str | None = "linear",
        added_emb_type: str | None = "prd",
        embedding_proj_dim: int | None = None,
        clip_embed_dim: int | None = None,
    ):
        super().__init__()
        _check_config(locals())
        inner = num_attention_heads * attention_head_dim
        embedding_proj_dim = embedding_proj_dim or embedding_dim
        clip_embed_dim = clip_embed_dim or embedding_dim

        self.proj_in = nn.Linear(embedding_dim, inner)
        self.embedding_proj_norm = nn.LayerNorm(embedding_proj_dim) if embedding_proj_norm_type == "layer" else None
        self.embedding_proj = nn.Linear(embedding_proj_dim, inner)
        self.embedding_control = nn.Linear(embedding_proj_dim, inner)  # as released: sized like the pooled text
        self.encoder_hidden_states_proj = nn.Linear(embedding_dim, inner)
        self.positional_embedding = nn.Parameter(torch.zeros(1, num_embeddings + additional_embeddings, inner))
        self.prd_embedding = nn.Parameter(torch.zeros(1, 1, inner))
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(
                inner, num_attention_heads, attention_head_dim,
                dropout=dropout, activation_fn="gelu", attention_bias=True,
            )
            for _ in range(num_layers)
        )
        self.norm_in = nn.LayerNorm(inner) if norm_in_type == "layer" else None
        self.norm_out = nn.LayerNorm(inner)
        self.proj_to_clip_embeddings = nn.Linear(inner, clip_embed_dim)
        # unCLIP's CLIP-latent statistics: in the checkpoint (and its parameter count) but unused by this prior, so
        # frozen: a trainable parameter that never gets a gradient breaks DistributedDataParallel.
        self.clip_mean = nn.Parameter(torch.zeros(1, clip_embed_dim), requires_grad=False)
        self.clip_std = nn.Parameter(torch.zeros(1, clip_embed_dim), requires_grad=False)

    @classmethod
    def tiny(cls, embedding_dim: int = 32) -> EclipsePrior:
        return cls(**prior_config(Profile.TINY, embedding_dim))

    def forward(
        self,
        hidden_states: torch.Tensor,
        proj_embedding: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        control_embedding: torch.Tensor,
        return_dict: bool = True,
    ) -> EclipsePriorOutput | torch.Tensor:
        """Predict the CLIP image embedding.

        hidden_states (B, d): the input token, Gaussian noise ε in Eq. 1. proj_embedding (B, d): pooled text
        embedding. encoder_hidden_states (B, num_embeddings, d): text hidden states with subject image embeddings
        interleaved. attention_mask (B, num_embeddings): 1 for real text tokens, 0 for padding.
        control_embedding (B, d): CLIP embedding of the edge map (the zero-image embedding when there is none).
        """
        batch, n_text = encoder_hidden_states.shape[:2]
        expected = self.config["num_embeddings"]
        if n_text != expected:
            raise ValueError(f"encoder_hidden_states has {n_text} tokens; the prior takes {expected}")
        if self.embedding_proj_norm is not None:
            proj_embedding = self.embedding_proj_norm(proj_embedding)
        text = self.encoder_hidden_states_proj(encoder_hidden_states)
        # Parameters are cast to the projections' dtype so that autocast (fp32 weights, bf16 activations) works.
        tokens = torch.cat(
            [
                text,
                self.embedding_control(control_embedding)[:, None],
                self.embedding_proj(proj_embedding)[:, None],
                self.proj_in(hidden_states)[:, None],
                self.prd_embedding.to(text.dtype).expand(batch, -1, -1),
            ],
            dim=1,
        )
        tokens = tokens + self.positional_embedding.to(tokens.dtype)
        bias = self.attention_bias(attention_mask, tokens.dtype)
        if self.norm_in is not None:
            tokens = self.norm_in(tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens, attention_mask=bias)
        # LayerNorm is per token, so normalising only the prd token equals the released norm-all-then-slice.
        predicted = self.proj_to_clip_embeddings(self.norm_out(tokens[:, -1]))
        return EclipsePriorOutput(predicted_image_embedding=predicted) if return_dict else predicted

    def attention_bias(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Additive bias (B·heads, L, L): causal (MASK_VALUE above the diagonal) plus text padding on the key axis.

        (1 − mask)·MASK_VALUE for the text tokens, 0 for the 4 extra tokens, which are never padding. Repeated per
        head (batch-major) as the released model does; diffusers' attention reshapes it to (B, heads, L, L).
        """
        length = self.config["num_embeddings"] + EXTRA_TOKENS
        padding = F.pad((1 - attention_mask.to(dtype)) * MASK_VALUE, (0, EXTRA_TOKENS), value=0.0)
        causal = torch.full((length, length), MASK_VALUE, dtype=dtype, device=padding.device).triu(1)
        bias = padding[:, None, :] + causal
        return bias.repeat_interleave(self.config["num_attention_heads"], dim=0)

    @classmethod
    def _load_pretrained_model(
        cls, model, state_dict, resolved_model_file, pretrained_model_name_or_path, loaded_keys, *args, **kwargs
    ):
        # diffusers only warns about missing keys (leaving them randomly initialised) and unexpected ones (dropping
        # them); a checkpoint that does not match the architecture exactly is a different model, so refuse it here,
        # before any weight is copied. Hooked at this (pinned diffusers 0.42) step because it knows the resolved file.
        expected = set(model.state_dict())
        missing, unexpected = sorted(expected - set(loaded_keys)), sorted(set(loaded_keys) - expected)
        if missing or unexpected:
            files = ", ".join(str(f) for f in resolved_model_file)
            raise ValueError(
                f"checkpoint {files} does not match the {cls.__name__} its config describes: "
                f"missing keys {missing}, unexpected keys {unexpected}"
            )
        return super()._load_pretrained_model(
            model, state_dict, resolved_model_file, pretrained_model_name_or_path, loaded_keys, *args, **kwargs
        )


def _check_config(args: dict) -> None:
    """Reject settings the released architecture (and the fixed token order) cannot express."""
    problems = [
        f"{name} must be a positive integer, got {args[name]!r}"
        for name in ("num_attention_heads", "attention_head_dim", "num_layers", "embedding_dim", "num_embeddings")
        if not (isinstance(args[name], int) and args[name] > 0)
    ]
    problems += [
        f"{name} must be None or a positive integer, got {args[name]!r}"
        for name in ("embedding_proj_dim", "clip_embed_dim")
        if args[name] is not None and not (isinstance(args[name], int) and args[name] > 0)
    ]
    if args["additional_embeddings"] != EXTRA_TOKENS:
        problems.append(
            f"additional_embeddings must be {EXTRA_TOKENS} (control, pooled text, input and prd tokens), "
            f"got {args['additional_embeddings']!r}"
        )
    if not (isinstance(args["dropout"], (int, float)) and 0 <= args["dropout"] < 1):
        problems.append(f"dropout must be in [0, 1), got {args['dropout']!r}")
    for name, allowed in (
        ("norm_in_type", (None, "layer")),
        ("embedding_proj_norm_type", (None, "layer")),
        ("encoder_hid_proj_type", ("linear",)),  # the text states are always projected
        ("added_emb_type", ("prd",)),  # the prediction is read from the prd token
    ):
        if args[name] not in allowed:
            problems.append(f"{name} must be one of {allowed}, got {args[name]!r}")
    if problems:
        raise ValueError("unsupported EclipsePrior config: " + "; ".join(problems))
