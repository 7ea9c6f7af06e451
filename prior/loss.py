"""The prior's training objective, Eq. 1 of the paper (after ECLIPSE, Patel et al. 2023):

    L_prior = E ‖z_x − f_θ(ε, z_y, z_xk)‖²₂  −  λ/N Σ_i log [ exp(⟨ẑ_x^i, z_y^i⟩/τ) / Σ_j exp(⟨ẑ_x^i, z_y^j⟩/τ) ]

Defaults are Eq. 1 as written; the alternatives are config options (prior/config.py's `loss` section). Provenance:

- λ = 0.2: the paper (Table 6).
- `reduction=sum` (default, Eq. 1): the squared L2 norm, summed over the d dimensions and averaged over the batch.
  `mean`: averaged over dimensions too (`F.mse_loss`, diffusers' unCLIP prior training); it divides the first term
  by d = 1280, so that λ = 0.2 then weighs the contrastive term 1280 times more than Eq. 1 does.
- `similarity=dot` (default, Eq. 1): ⟨·,·⟩ is "the inner product" of the raw (unnormalised) embeddings.
  `cosine`: the inner product of L2-normalised vectors, as CLIP trains; the paper does not say it normalises.
- τ: the paper gives no value. For `cosine` we use 0.01, the temperature CLIP training ends at (its logit scale
  is clamped at 100), so the term is CLIP's image→text classification loss on the predicted embedding. For `dot`
  (default) we use τ = 0.01 · 1280 = 12.8: for vectors whose coordinates have unit RMS (norm √d, as the synthetic
  features and a unit-variance embedding have) ⟨a, b⟩ = d · cos(a, b), so τ = 0.01 · d gives the same logits as
  CLIP's 100 · cos. With real bigG embeddings of other norms, τ ≈ 0.01 · mean(‖ẑ_x‖ · ‖z_y‖) keeps that meaning.
  `loss.tau` is one key: switching to `cosine` also needs `loss.tau=0.01`.
- Only the image→text direction (softmax over the batch's texts j for each prediction i), as Eq. 1 writes it.
- Computed in float32: at τ = 0.01 the bf16 rounding of a cosine (~0.004) would move a logit by ~0.4.

`bench/prior_loss.py` prints both terms' gradient norms at initialisation for each option.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LAMBDA = 0.2
TAU = 12.8  # the default similarity's; cosine: TAU_COSINE
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
