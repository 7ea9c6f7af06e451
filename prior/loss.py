"""The prior's training objective, Eq. 1 of the paper (after ECLIPSE, Patel et al. 2023):

    L_prior = E ‖z_x − f_θ(ε, z_y, z_xk)‖²₂  −  λ/N Σ_i log [ exp(⟨ẑ_x^i, z_y^i⟩/τ) / Σ_j exp(⟨ẑ_x^i, z_y^j⟩/τ) ]

Defaults are Eq. 1 as written; the alternatives are config options (prior/config.py's `loss` section). Provenance:

- λ = 0.2: the paper (Table 6).
- `reduction=mean` (default): §3.1 calls the first term "the mean-squared error", and the authors' decoder script and
  diffusers' unCLIP prior training compute it with `F.mse_loss` (averaged over the d dimensions and the batch).
  `sum`: Eq. 1's ‖·‖²₂ read literally, summed over d = 1280: d times the mean's gradient, so the contrastive term's
  is 0.006 (τ = 12.8) or 0.0005 (τ = 128) of the squared error's and λ = 0.2 acts as λ ≈ 0, Table 6's "projection
  loss only".
- `similarity=dot` (default, Eq. 1): ⟨·,·⟩ is "the inner product" of the raw (unnormalised) embeddings.
  `cosine`: the inner product of L2-normalised vectors, as CLIP trains; the paper does not say it normalises.
- τ: the paper gives no value; measured (docs/paper-defaults.md: both terms' gradient norms at initialisation and
  after training, d = 1280). With `mean`, τ = 128 (= 0.1 · d) keeps the λ-weighted contrastive gradient at 0.6–0.9
  of the squared error's, from initialisation on, and trains the prediction closest to the target; τ = 12.8
  (0.01 · d, CLIP's logit scale 100 for unit-RMS vectors) makes it 4–7 times the squared error's, τ = 1 about 100
  times (the squared error then grows). For unit-RMS vectors (norm √d, as the synthetic features) ⟨a, b⟩ = d · cos,
  so τ = 128 gives logits 10 · cos; with real bigG embeddings of other norms, τ ≈ 0.1 · mean(‖ẑ_x‖ · ‖z_y‖) keeps
  that. For `cosine` the option's τ is 0.01 (CLIP's final temperature); measured, its term's gradient is 3–15 times
  the squared error's. `loss.tau=0` (the default) picks each similarity's own: 0.1·d for `dot`, 0.01 for `cosine`.
- Only the image→text direction (softmax over the batch's texts j for each prediction i), as Eq. 1 writes it.
- Computed in float32: at τ = 0.01 the bf16 rounding of a cosine (~0.004) would move a logit by ~0.4.

`bench/prior_loss.py` prints both terms' gradient norms at initialisation and during training for each option.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LAMBDA = 0.2
TAU = 128.0  # the default similarity's (0.1 · d at d = 1280, measured: see above); cosine: TAU_COSINE
TAU_COSINE = 0.01
REDUCTIONS = ("mean", "sum")  # the first is the default
SIMILARITIES = ("dot", "cosine")


def check_options(reduction: str, similarity: str) -> None:
    """ValueError naming the valid choices for an unknown reduction or similarity."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"loss.reduction={reduction!r} is not one of {', '.join(REDUCTIONS)}")
    if similarity not in SIMILARITIES:
        raise ValueError(f"loss.similarity={similarity!r} is not one of {', '.join(SIMILARITIES)}")


def prior_loss(
    predicted: torch.Tensor,
    target_image: torch.Tensor,
    text_embedding: torch.Tensor,
    lam: float = LAMBDA,
    tau: float = TAU,
    reduction: str = REDUCTIONS[0],
    similarity: str = SIMILARITIES[0],
    texts: torch.Tensor | None = None,
    offset: int = 0,
) -> dict[str, torch.Tensor]:
    """Eq. 1 on a batch: predicted ẑ_x, target z_x and pooled text z_y, each (B, d).

    Returns scalar tensors `total` = `mse` + lam · `contrastive`, with each term separately for logging.
    `mse` is mean_i ‖ẑ_i − z_i‖² (reduction=sum) or that divided by d (mean); `contrastive` is
    −mean_i log softmax_j(s(ẑ_i, z_y^j) / tau) at j = i, s the inner product (dot) or cosine similarity.
    `texts` (N, d): the softmax's texts j when they are more than this batch's, the global batch's gathered from
    every trainer, in which `text_embedding`'s rows start at row `offset`.
    """
    check_options(reduction, similarity)
    predicted, target_image = predicted.float(), target_image.float()
    texts = (text_embedding if texts is None else texts).float()
    squared = (predicted - target_image).square()
    mse = squared.sum(dim=-1).mean() if reduction == "sum" else squared.mean()
    if similarity == "cosine":
        predicted, texts = F.normalize(predicted, dim=-1), F.normalize(texts, dim=-1)
    logits = predicted @ texts.T / tau
    contrastive = F.cross_entropy(logits, torch.arange(offset, offset + len(logits), device=logits.device))
    return {"total": mse + lam * contrastive, "mse": mse, "contrastive": contrastive}
