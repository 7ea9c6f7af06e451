import math

import numpy as np
import pytest
import torch

from prior.loss import LAMBDA, TAU, prior_loss


def test_hand_computed_b2_d2():
    predicted = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # directions e1, e2: normalisation must remove the lengths
    target = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    text = torch.tensor([[5.0, 0.0], [0.0, 0.5]])
    out = prior_loss(predicted, target, text, lam=0.5, tau=1.0)
    mse = (1 + 1 + 0 + 1) / 4
    # cosine logits [[1, 0], [0, 1]]: each row's -log softmax at the diagonal is log(1 + e^-1)
    contrastive = math.log(1 + math.exp(-1))
    assert out["mse"].item() == pytest.approx(mse)
    assert out["contrastive"].item() == pytest.approx(contrastive)
    assert out["total"].item() == pytest.approx(mse + 0.5 * contrastive)


def test_contrastive_is_image_to_text_only():
    # rows are predictions, columns texts: both predictions point at text 0, so row 1 pays and row 0 barely does
    predicted = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = prior_loss(predicted, predicted, text, tau=1.0)
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2
    assert out["contrastive"].item() == pytest.approx(expected)
    assert out["mse"].item() == 0


def test_matches_independent_numpy_formula_with_defaults():
    rng = np.random.default_rng(0)
    p, z, t = (rng.normal(size=(5, 7)) for _ in range(3))
    predicted, target, text = (torch.tensor(a, dtype=torch.float32) for a in (p, z, t))
    out = prior_loss(predicted, target, text)
    pn = p / np.linalg.norm(p, axis=1, keepdims=True)
    tn = t / np.linalg.norm(t, axis=1, keepdims=True)
    logits = pn @ tn.T / TAU
    top = logits.max(1, keepdims=True)
    log_softmax = logits - top - np.log(np.exp(logits - top).sum(1, keepdims=True))
    contrastive = -np.mean(np.diag(log_softmax))
    mse = np.mean((p - z) ** 2)
    assert LAMBDA == 0.2
    assert out["contrastive"].item() == pytest.approx(contrastive, rel=1e-4)
    assert out["mse"].item() == pytest.approx(mse, rel=1e-5)
    assert out["total"].item() == pytest.approx(mse + 0.2 * contrastive, rel=1e-4)


def test_gradients_flow_to_the_prediction_in_float32():
    predicted = torch.randn(4, 8, dtype=torch.bfloat16, requires_grad=True)
    out = prior_loss(predicted, torch.randn(4, 8), torch.randn(4, 8))
    assert all(v.dtype == torch.float32 and v.ndim == 0 for v in out.values())
    out["total"].backward()
    assert predicted.grad is not None and torch.isfinite(predicted.grad).all() and predicted.grad.abs().sum() > 0
