"""The prior's training objective, Eq. 1 of the paper (after ECLIPSE, Patel et al. 2023):

    L_prior = E ‖z_x − f_θ(ε, z_y, z_xk)‖²  −  λ/N Σ_i log [ exp(⟨ẑ_x^i, z_y^i⟩/τ) / Σ_j exp(⟨ẑ_x^i, z_y^j⟩/τ) ]

The paper fixes λ = 0.2 (Table 6) and calls ⟨·,·⟩ "the inner product" and τ "the temperature", without a value for
τ or a word on normalisation. Choices made here where it is silent:

- Projection term: mean squared error over batch and dimensions (`F.mse_loss`), the reduction diffusers' unCLIP
  prior training uses; the paper's E‖·‖² is the same up to the constant factor d.
- Contrastive term: the inner product of L2-normalised vectors (cosine similarity), as in CLIP, whose latent space
  the prior predicts into; without normalisation the term could be lowered by growing ‖ẑ_x‖, fighting the MSE.
- τ = 0.01: the temperature CLIP training ends at (its logit scale is clamped at 100), so the term is CLIP's own
  image→text classification loss applied to the predicted embedding. Only the image→text direction (softmax over
  the batch's texts j for each prediction i), as Eq. 1 writes it.
- Computed in float32: at τ = 0.01 the bf16 rounding of a cosine (~0.004) would move a logit by ~0.4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LAMBDA = 0.2
TAU = 0.01


def prior_loss(
    predicted: torch.Tensor,
    target_image: torch.Tensor,
    text_embedding: torch.Tensor,
    lam: float = LAMBDA,
    tau: float = TAU,
) -> dict[str, torch.Tensor]:
    """Eq. 1 on a batch: predicted ẑ_x, target z_x and pooled text z_y, each (B, d).

    Returns scalar tensors `total` = `mse` + lam · `contrastive`, with each term separately for logging.
    `contrastive` is −mean_i log softmax_j(⟨p̂_i, t̂_j⟩ / tau) at j = i, p̂ and t̂ unit vectors.
    """
    predicted, target_image, text_embedding = predicted.float(), target_image.float(), text_embedding.float()
    mse = F.mse_loss(predicted, target_image)
    logits = F.normalize(predicted, dim=-1) @ F.normalize(text_embedding, dim=-1).T / tau
    contrastive = F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))
    return {"total": mse + lam * contrastive, "mse": mse, "contrastive": contrastive}
