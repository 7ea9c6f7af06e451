"""Balance of Eq. 1's two terms, at initialisation and after training steps, for each loss option. Prints numbers;
asserts nothing. docs/paper-defaults.md gives the table this printed and the τ it decided.

The prior (prior/model.py's paper config: d = 1280, 16 heads × 32; `--layers` of its 10 layers, 10 being the
34.8 M-parameter paper prior) is randomly initialised with `--seed` and trained with AdamW on a fixed synthetic set
of `--samples` samples whose embeddings have unit-variance coordinates (norm ≈ √d, as
`storage.synthetic_features` writes them), `--scale` times that. The set is learnable as CLIP's is: each
target z_x = √(1 − c²) · noise + c · z_y, so cos(z_x, z_y) ≈ c = `--text-cosine` (≈ 0.3 for CLIP image-text pairs),
and the subject and edge embeddings are noisy copies of z_x. For each option (reduction, similarity, τ) one model is
trained on that option's Eq. 1; at step 0 and every `--every` steps it prints, on a fixed probe batch, both terms
and the gradient norms of `mse` and of `lam · contrastive` over the model's parameters (θ) and over the prediction
ẑ_x, and their ratio (contrastive / mse): how much the contrastive term steers training at that point.

    python bench/prior_loss.py [--layers 1] [--batch-size 32] [--steps 200] [--every 50] [--lr 1e-4]
        [--options mean:dot:12.8 mean:cosine:0.01 ...]
"""

from __future__ import annotations

import argparse
import time

import torch

from prior.loss import LAMBDA, prior_loss
from prior.model import EclipsePrior, prior_config

# reduction:similarity:tau; the first is the default of prior/loss.py
OPTIONS = ("mean:dot:128", "mean:dot:12.8", "mean:dot:1", "mean:cosine:0.01", "sum:dot:128", "sum:dot:12.8")


def synthetic_set(n: int, d: int, tokens: int, scale: float, text_cosine: float, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(n, d, generator=g)
    target = (1 - text_cosine**2) ** 0.5 * torch.randn(n, d, generator=g) + text_cosine * text
    lengths = torch.randint(4, 30, (n, 1), generator=g)
    states = torch.randn(n, tokens, d, generator=g)
    states[:, 2] = target + 0.5 * torch.randn(n, d, generator=g)  # an interleaved subject embedding
    return {
        "proj_embedding": scale * text,
        "encoder_hidden_states": scale * states,
        "attention_mask": (torch.arange(tokens)[None] < lengths).long(),
        "control_embedding": scale * (target + torch.randn(n, d, generator=g)),
        "target": scale * target,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=1, help="transformer layers (the paper prior has 10)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--samples", type=int, default=1024, help="size of the synthetic training set")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=50, help="steps between measurements")
    parser.add_argument("--lr", type=float, default=1e-4, help="constant AdamW learning rate (paper peak: 5e-5)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the synthetic embeddings")
    parser.add_argument("--text-cosine", type=float, default=0.3)
    parser.add_argument("--options", nargs="+", default=list(OPTIONS), metavar="REDUCTION:SIMILARITY:TAU")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    config = prior_config("paper") | {"num_layers": args.layers}
    d, tokens, b = config["embedding_dim"], config["num_embeddings"], args.batch_size
    data = synthetic_set(args.samples, d, tokens, args.scale, args.text_cosine, args.seed)
    probe = {k: v[:b] for k, v in data.items()}
    print(f"prior: paper widths, {args.layers} layer(s); d = {d}; batch {b}; {args.samples} synthetic samples, "
          f"‖z‖ ≈ {args.scale * d ** 0.5:.1f}, cos(z_x, z_y) ≈ {args.text_cosine}; AdamW lr {args.lr} constant; "
          f"λ = {LAMBDA}; {torch.get_num_threads()} threads")
    print(f"{'reduction':>9} {'similarity':>10} {'tau':>6} {'step':>5} {'mse':>10} {'contrast.':>9} "
          f"{'|g_mse|θ':>10} {'|g_con|θ':>10} {'ratio θ':>9} {'ratio ẑ':>9} {'cos(ẑ,z)':>9}")
    for option in args.options:
        reduction, similarity, tau = option.split(":")
        torch.manual_seed(args.seed)
        model = EclipsePrior(**config)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
        order = torch.Generator().manual_seed(args.seed)
        start = time.perf_counter()
        for step in range(args.steps + 1):
            if step % args.every == 0:
                _measure(model, params, probe, reduction, similarity, float(tau), step)
            if step == args.steps:
                break
            rows = torch.randint(0, args.samples, (b,), generator=order)
            loss = _loss(model, {k: v[rows] for k, v in data.items()}, reduction, similarity, float(tau))[0]
            optimizer.zero_grad(set_to_none=True)
            loss["total"].backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
        print(f"# {option}: {args.steps} steps in {time.perf_counter() - start:.0f} s", flush=True)


def _loss(model: EclipsePrior, batch: dict[str, torch.Tensor], reduction: str, similarity: str, tau: float):
    target = batch["target"]
    noise = torch.randn_like(target)  # ε, never scaled
    inputs = {k: v for k, v in batch.items() if k != "target"}
    predicted = model(hidden_states=noise, **inputs, return_dict=False)
    assert isinstance(predicted, torch.Tensor)
    return prior_loss(predicted, target, batch["proj_embedding"], LAMBDA, tau, reduction, similarity), predicted


def _measure(model, params, probe, reduction: str, similarity: str, tau: float, step: int) -> None:
    torch.manual_seed(step)  # the same ε at a step for every option
    out, predicted = _loss(model, probe, reduction, similarity, tau)
    terms = {"mse": out["mse"], "con": LAMBDA * out["contrastive"]}
    on_params = {k: _norm(torch.autograd.grad(v, params, retain_graph=True)) for k, v in terms.items()}
    on_pred = {k: _norm(torch.autograd.grad(v, [predicted], retain_graph=True)) for k, v in terms.items()}
    cosine = torch.nn.functional.cosine_similarity(predicted, probe["target"], dim=-1).mean()
    print(f"{reduction:>9} {similarity:>10} {tau:>6g} {step:>5} {out['mse'].item():>10.3f} "
          f"{out['contrastive'].item():>9.3f} {on_params['mse']:>10.3g} {on_params['con']:>10.3g} "
          f"{on_params['con'] / on_params['mse']:>9.3g} {on_pred['con'] / on_pred['mse']:>9.3g} "
          f"{cosine.item():>9.3f}", flush=True)


def _norm(grads: tuple[torch.Tensor, ...]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


if __name__ == "__main__":
    main()
