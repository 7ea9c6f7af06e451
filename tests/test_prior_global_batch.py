"""The global batch: two trainers (gloo, on CPU, DistributedDataParallel) each on half of a batch give the loss and
the gradients of one trainer on the whole batch, because the contrastive softmax runs over the texts gathered from
both (prior/loop.py's step_losses); per-trainer negatives would give another loss."""

import pytest
import torch
import torch.distributed as dist
from torch.multiprocessing.spawn import spawn
from torch.nn.parallel import DistributedDataParallel

from lambda_eclipse.errors import UserError
from prior.config import load_train_config, resolved_tau, share
from prior.loop import step_losses
from prior.loss import prior_loss
from prior.model import EclipsePrior

BATCH, D, TOKENS = 8, 32, 77


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(3, 20, (BATCH, 1), generator=g)
    return {
        "hidden_states": torch.randn(BATCH, D, generator=g),
        "proj_embedding": 6 * torch.randn(BATCH, D, generator=g),  # logits of a few units: a non-trivial softmax
        "encoder_hidden_states": torch.randn(BATCH, TOKENS, D, generator=g),
        "attention_mask": (torch.arange(TOKENS)[None] < lengths).long(),
        "control_embedding": torch.randn(BATCH, D, generator=g),
        "target": torch.randn(BATCH, D, generator=g),
    }


def _step(rank: int, world: int, overrides: list[str]) -> tuple[float, list[torch.Tensor]]:
    """One trainer's first step on its share: the loss averaged over the trainers, and the (averaged) gradients."""
    cfg = load_train_config(None, overrides)
    torch.manual_seed(0)
    model = EclipsePrior.tiny(D)
    net = DistributedDataParallel(model) if world > 1 else model
    part = BATCH // world
    mine = {k: v[rank * part:(rank + 1) * part] for k, v in _batch().items()}
    losses = step_losses(net, mine, cfg, torch.float32, rank, world)
    losses["total"].backward()
    total = losses["total"].detach()
    if world > 1:
        dist.all_reduce(total)
    return total.item() / world, [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _trainer(rank: int, init: str, overrides: list[str], out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        result = _step(rank, 2, overrides)
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("overrides", [[], ["loss.similarity=cosine", "loss.tau=0.01"]], ids=["dot", "cosine"])
def test_two_trainers_on_halves_equal_one_trainer_on_the_whole_batch(tmp_path, overrides):
    out = str(tmp_path / "rank0.pt")
    spawn(_trainer, args=(f"file://{tmp_path / 'rendezvous'}", overrides, out), nprocs=2)
    loss2, grads2 = torch.load(out, weights_only=True)
    loss1, grads1 = _step(0, 1, overrides)
    assert loss2 == pytest.approx(loss1, rel=1e-5)
    assert len(grads2) == len(grads1) > 0
    for two, one in zip(grads2, grads1):
        torch.testing.assert_close(two, one, rtol=1e-4, atol=1e-6)
    # the alternative, each trainer's softmax over its own half of the texts, is another loss on the same batch
    cfg = load_train_config(None, overrides).loss
    torch.manual_seed(0)
    with torch.no_grad():
        batch = _batch()
        target = batch.pop("target")
        predicted = EclipsePrior.tiny(D)(**batch, return_dict=False)
        assert isinstance(predicted, torch.Tensor)
        halves = [prior_loss(predicted[s], target[s], batch["proj_embedding"][s], cfg.lam, resolved_tau(cfg, D),
                             cfg.reduction, cfg.similarity)["total"].item() for s in (slice(0, 4), slice(4, 8))]
    assert sum(halves) / 2 != pytest.approx(loss1, rel=1e-3)


def test_a_global_batch_that_does_not_divide_is_an_error_naming_both():
    assert share(1024, 2) == 512 and share(1024, 1) == 1024
    with pytest.raises(UserError, match=r"train.batch_size=1024 \(the global batch\) does not divide among 3 "
                                        "data-parallel trainers"):
        load_train_config(None, ["runtime.trainers=3"])
    with pytest.raises(UserError, match=r"train.batch_size=10 .* among 4 data-parallel trainers"):
        share(10, 4)
