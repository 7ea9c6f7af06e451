import math

import numpy as np
import pytest
import torch

from lambda_eclipse.errors import UserError
from prior import loss as loss_module
from prior.config import (
    LOSS_REDUCTIONS,
    LOSS_SIMILARITIES,
    LossSection,
    capped_batch,
    load_train_config,
    resolved_tau,
)
from prior.loss import LAMBDA, TAU, prior_loss

PREDICTED = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # directions e1, e2 with lengths 2 and 3
TARGET = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
TEXT = torch.tensor([[1.0, 0.0], [0.0, 1.0]])


def test_sum_reduction_hand_computed():
    out = prior_loss(PREDICTED, TARGET, TEXT, lam=0.5, tau=1.0, reduction="sum")
    # ‖·‖² per sample: (1² + 1²) and (0² + 1²), averaged over the batch: not divided by d
    mse = (2 + 1) / 2
    # inner-product logits [[2, 0], [0, 3]]: row i's −log softmax at the diagonal is log(1 + e^−logit_ii)
    contrastive = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-3))) / 2
    assert out["mse"].item() == pytest.approx(mse)
    assert out["contrastive"].item() == pytest.approx(contrastive)
    assert out["total"].item() == pytest.approx(mse + 0.5 * contrastive)


def test_mean_reduction_and_cosine_hand_computed():
    out = prior_loss(PREDICTED, TARGET, TEXT, lam=0.5, tau=1.0, reduction="mean", similarity="cosine")
    mse = (1 + 1 + 0 + 1) / 4
    contrastive = math.log(1 + math.exp(-1))  # cosine logits [[1, 0], [0, 1]]: the lengths 2 and 3 are gone
    assert out["mse"].item() == pytest.approx(mse)
    assert out["contrastive"].item() == pytest.approx(contrastive)
    assert out["total"].item() == pytest.approx(mse + 0.5 * contrastive)


def test_sum_is_d_times_mean():
    g = torch.Generator().manual_seed(0)
    p, z, t = (torch.randn(6, 1280, generator=g) for _ in range(3))
    summed, mean = prior_loss(p, z, t, reduction="sum"), prior_loss(p, z, t, reduction="mean")
    assert summed["mse"].item() == pytest.approx(1280 * mean["mse"].item(), rel=1e-5)
    assert summed["contrastive"].item() == mean["contrastive"].item()


@pytest.mark.parametrize("similarity", LOSS_SIMILARITIES)
def test_gathered_texts_make_the_halves_average_to_the_whole_batch(similarity):
    g = torch.Generator().manual_seed(0)
    p, z, t = (3 * torch.randn(6, 16, generator=g) for _ in range(3))
    whole = prior_loss(p, z, t, similarity=similarity)
    halves = [prior_loss(p[i:i + 3], z[i:i + 3], t[i:i + 3], similarity=similarity, texts=t, offset=i)
              for i in (0, 3)]
    for term in ("mse", "contrastive"):
        assert (halves[0][term] + halves[1][term]).item() / 2 == pytest.approx(whole[term].item(), rel=1e-6)
    alone = prior_loss(p[:3], z[:3], t[:3], similarity=similarity)  # its own 3 texts only: fewer negatives
    assert alone["contrastive"].item() != pytest.approx(halves[0]["contrastive"].item(), rel=1e-3)


def test_temperature_divides_the_inner_product():
    # dot with tau=2 on the PREDICTED vectors equals dot with tau=1 on them halved
    halved = prior_loss(PREDICTED / 2, TARGET, TEXT, tau=1.0)["contrastive"]
    assert prior_loss(PREDICTED, TARGET, TEXT, tau=2.0)["contrastive"].item() == pytest.approx(halved.item())


@pytest.mark.parametrize("similarity", LOSS_SIMILARITIES)
def test_contrastive_is_image_to_text_only(similarity):
    # rows are predictions, columns texts: both predictions point at text 0, so row 1 pays and row 0 barely does
    predicted = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = prior_loss(predicted, predicted, text, tau=1.0, similarity=similarity)
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2
    assert out["contrastive"].item() == pytest.approx(expected)
    assert out["mse"].item() == 0


@pytest.mark.parametrize("reduction", LOSS_REDUCTIONS)
@pytest.mark.parametrize("similarity", LOSS_SIMILARITIES)
def test_matches_independent_numpy_formula(reduction, similarity):
    rng = np.random.default_rng(0)
    p, z, t = (rng.normal(size=(5, 7)) for _ in range(3))
    tau = TAU if similarity == "dot" else loss_module.TAU_COSINE
    predicted, target, text = (torch.tensor(a, dtype=torch.float32) for a in (p, z, t))
    out = prior_loss(predicted, target, text, tau=tau, reduction=reduction, similarity=similarity)
    if similarity == "cosine":
        pn, tn = p / np.linalg.norm(p, axis=1, keepdims=True), t / np.linalg.norm(t, axis=1, keepdims=True)
    else:
        pn, tn = p, t
    logits = pn @ tn.T / tau
    top = logits.max(1, keepdims=True)
    log_softmax = logits - top - np.log(np.exp(logits - top).sum(1, keepdims=True))
    contrastive = -np.mean(np.diag(log_softmax))
    mse = np.mean(np.sum((p - z) ** 2, axis=1)) if reduction == "sum" else np.mean((p - z) ** 2)
    assert out["contrastive"].item() == pytest.approx(contrastive, rel=1e-4)
    assert out["mse"].item() == pytest.approx(mse, rel=1e-5)
    assert out["total"].item() == pytest.approx(mse + LAMBDA * contrastive, rel=1e-4)


def test_defaults_and_config_agree():
    section = LossSection()
    assert (LAMBDA, TAU, loss_module.TAU_COSINE) == (0.2, 128.0, 0.01)
    assert (section.lam, section.tau, section.reduction, section.similarity) == (LAMBDA, 0.0, "mean", "dot")
    assert resolved_tau(section, 1280) == pytest.approx(TAU)  # 0: 0.1·d, the measured 128 at the paper's d
    assert resolved_tau(section, 32) == pytest.approx(3.2)
    assert resolved_tau(LossSection(similarity="cosine"), 1280) == loss_module.TAU_COSINE
    assert resolved_tau(LossSection(tau=7.0), 1280) == 7.0
    section = LossSection(tau=TAU)
    assert (LOSS_REDUCTIONS, LOSS_SIMILARITIES) == (loss_module.REDUCTIONS, loss_module.SIMILARITIES)
    default = prior_loss(PREDICTED, TARGET, TEXT)
    explicit = prior_loss(PREDICTED, TARGET, TEXT, section.lam, section.tau, section.reduction, section.similarity)
    assert default["total"].item() == explicit["total"].item()


def test_options_parse_from_set():
    cfg = load_train_config(None, ["loss.reduction=mean", "loss.similarity=cosine", "loss.tau=0.01"])
    assert (cfg.loss.reduction, cfg.loss.similarity, cfg.loss.tau) == ("mean", "cosine", 0.01)


def test_bad_options_are_named():
    with pytest.raises(UserError, match=r"loss.reduction must be one of mean, sum \(got 'avg'\)"):
        load_train_config(None, ["loss.reduction=avg"])
    with pytest.raises(UserError, match=r"loss.similarity must be one of dot, cosine \(got 'l2'\).*"):
        load_train_config(None, ["loss.similarity=l2"])
    with pytest.raises(UserError, match=r"loss.tau must be ≥ 0 \(0: 0.1·d with similarity=dot"):
        load_train_config(None, ["loss.tau=-1"])
    with pytest.raises(ValueError, match=r"loss.reduction='avg' is not one of mean, sum"):
        prior_loss(PREDICTED, TARGET, TEXT, reduction="avg")
    with pytest.raises(ValueError, match=r"loss.similarity='l2' is not one of dot, cosine"):
        prior_loss(PREDICTED, TARGET, TEXT, similarity="l2")


def test_gradients_flow_to_the_prediction_in_float32():
    predicted = torch.randn(4, 8, dtype=torch.bfloat16, requires_grad=True)
    out = prior_loss(predicted, torch.randn(4, 8), torch.randn(4, 8))
    assert all(v.dtype == torch.float32 and v.ndim == 0 for v in out.values())
    out["total"].backward()
    assert predicted.grad is not None and torch.isfinite(predicted.grad).all() and predicted.grad.abs().sum() > 0


@pytest.mark.parametrize(("batch", "rows", "trainers", "used"), [
    (1024, 19, 1, 19),  # the quickstart's dataset: every sample once, no copies of a positive among its negatives
    (1024, 19, 2, 18),  # a multiple of the trainers
    (1024, 1, 2, 2),  # at least one per trainer
    (8, 100, 2, 8),  # a dataset larger than the batch: the batch as asked
])
def test_the_global_batch_is_capped_at_the_training_samples(batch, rows, trainers, used):
    assert capped_batch(batch, rows, trainers) == used
