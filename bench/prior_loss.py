"""Balance of Eq. 1's two terms at initialisation, for each loss option. Prints numbers; asserts nothing.

The paper-size prior (prior/model.py's paper config: d = 1280, 10 layers, 34.8 M parameters), randomly initialised
with `--seed`, takes one synthetic batch whose embeddings have unit-variance coordinates (norm ≈ √d, as
`storage.synthetic_features` writes them); `--scale` multiplies every input embedding and the target, to see
how the `dot` option depends on the embeddings' norms. For each (reduction, similarity) with its τ (dot: loss.TAU,
cosine: loss.TAU_COSINE) it prints both terms, the gradient norm of `mse` and of `lam · contrastive` over the
model's parameters and over the prediction ẑ_x, and their ratio (contrastive / mse): how much the contrastive
term steers the first steps.

    python bench/prior_loss.py [--batch-size 64] [--scale 1.0] [--seed 0]
"""

from __future__ import annotations

import argparse

import torch

from prior.loss import LAMBDA, REDUCTIONS, SIMILARITIES, TAU, TAU_COSINE, prior_loss
from prior.model import EclipsePrior, prior_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the synthetic embeddings")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    config = prior_config("paper")
    model = EclipsePrior(**config)
    d, tokens, b = config["embedding_dim"], config["num_embeddings"], args.batch_size
    lengths = torch.randint(4, 30, (b, 1))
    inputs = {
        "hidden_states": torch.randn(b, d),  # ε, never scaled
        "proj_embedding": args.scale * torch.randn(b, d),
        "encoder_hidden_states": args.scale * torch.randn(b, tokens, d),
        "attention_mask": (torch.arange(tokens)[None] < lengths).long(),
        "control_embedding": args.scale * torch.randn(b, d),
    }
    target = args.scale * torch.randn(b, d)
    predicted = model(**inputs, return_dict=False)
    assert isinstance(predicted, torch.Tensor)
    params = [p for p in model.parameters() if p.requires_grad]
    print(f"paper prior ({sum(p.numel() for p in params) / 1e6:.1f} M trainable), d = {d}, batch {b}, "
          f"embedding scale {args.scale} (‖z‖ ≈ {args.scale * d ** 0.5:.1f}), ‖ẑ_x‖ at init ≈ "
          f"{predicted.norm(dim=-1).mean():.2f}, λ = {LAMBDA}")
    print(f"{'reduction':>9} {'similarity':>10} {'tau':>6} {'mse':>10} {'contrast.':>9} "
          f"{'|g_mse|θ':>10} {'|g_con|θ':>10} {'ratio θ':>9} {'ratio ẑ':>9}")
    for reduction in REDUCTIONS:
        for similarity in SIMILARITIES:
            tau = TAU if similarity == "dot" else TAU_COSINE
            out = prior_loss(predicted, target, inputs["proj_embedding"], LAMBDA, tau, reduction, similarity)
            terms = {"mse": out["mse"], "con": LAMBDA * out["contrastive"]}
            on_params = {k: _norm(torch.autograd.grad(v, params, retain_graph=True)) for k, v in terms.items()}
            on_pred = {k: _norm(torch.autograd.grad(v, [predicted], retain_graph=True)) for k, v in terms.items()}
            default = " (default)" if (reduction, similarity) == (REDUCTIONS[0], SIMILARITIES[0]) else ""
            print(f"{reduction:>9} {similarity:>10} {tau:>6g} {out['mse'].item():>10.2f} "
                  f"{out['contrastive'].item():>9.3f} {on_params['mse']:>10.3g} {on_params['con']:>10.3g} "
                  f"{on_params['con'] / on_params['mse']:>9.3g} {on_pred['con'] / on_pred['mse']:>9.3g}{default}")


def _norm(grads: tuple[torch.Tensor, ...]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


if __name__ == "__main__":
    main()
