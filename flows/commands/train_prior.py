"""`lambda-eclipse train-prior`: registered on the top-level parser by `add_parser`."""

from __future__ import annotations

import argparse

from lambda_eclipse.config import add_config_options, describe_keys
from lambda_eclipse.profile import names
from prior.config import PRIOR_PROFILES, TrainConfig, load_train_config

EPILOG = """\
Trains the prior on Eq. 1 (MSE + loss.lam · contrastive) with AdamW, warm-up and a schedule, on the train split of a
dataset built by build-dataset; validates on its val split (loss, cosine to the target, top-1 retrieval in a batch).

Training runs on Ray Train: the Ray cluster named by RAY_ADDRESS, else a Ray started for this run.
runtime.trainers trainers (default 0: one per GPU of the cluster, 1 without GPUs), on the cluster's GPUs when it has
any. train.batch_size is the global batch (the paper's 1,024: 512 on each of 2 GPUs): each trainer takes its share
(it must divide by the trainers), and the contrastive term's negatives are the whole global batch's texts, so the
optimisation is the same whatever the number of trainers. Eq. 1's first term is §3.1's mean-squared error
(loss.reduction=mean; sum: summed over the d dimensions).
Checkpoints go to RUN_DIR through Ray Train, so on a cluster RUN_DIR must be storage every node reaches (a shared
path, or an object store URL such as s3://bucket/runs/prior). A trainer that dies (a killed process, a lost node)
is restarted by Ray and the run resumes from its last checkpoint on its own, runtime.max_failures times at most.

Steps: a run trains up to train.max_steps, its lr schedule spanning 0…max_steps. With train.steps_per_run=N > 0 it
trains N steps beyond the step it starts from (its latest checkpoint with --resume, or --init-from's), and its lr
schedule (warm-up, then the decay) spans those N steps. Nightly retraining is exactly that: continue the current
prior for train.steps_per_run more steps on the current dataset, in a new RUN_DIR:
  lambda-eclipse train-prior --data data/ --output runs/prior-2 --init-from runs/prior-1 --set train.steps_per_run=5000

config keys (--set section.key=value), with their defaults (the paper's values where it gives them):
{config_keys}

examples:
  lambda-eclipse train-prior --data out/dataset --output out/prior --set train.max_steps=20
  lambda-eclipse train-prior --data s3://bucket/data --output s3://bucket/runs/prior --set runtime.trainers=2
  lambda-eclipse train-prior --data data/ --output runs/prior --resume

RUN_DIR gets checkpoints/step-NNNNNNNN/ (diffusers layout + training_state.pt; the last checkpoint.keep are kept),
final/ (diffusers layout), metrics.jsonl, tensorboard/, loss_curve.png and summary.json. --resume continues from
the latest checkpoint (model, optimizer, schedule, RNG and data position), or starts afresh if there is none.
"""


def add_parser(subcommands) -> argparse.ArgumentParser:
    parser = subcommands.add_parser(
        "train-prior",
        help="train the λ-ECLIPSE prior on a built dataset",
        description="Train the λ-ECLIPSE prior; checkpoints load into the released inference code.",
        epilog=EPILOG.format(config_keys=describe_keys(TrainConfig)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data", required=True, metavar="DIR",
        help="dataset written by build-dataset: a directory or an fsspec URL (s3://bucket/data, file:///data)",
    )
    parser.add_argument(
        "--output", required=True, metavar="RUN_DIR",
        help="run directory (created if missing): a local path or an fsspec URL (s3://bucket/runs/prior)",
    )
    parser.add_argument(
        "--profile", default=None, choices=names(PRIOR_PROFILES),
        help="prior size: tiny (2 layers, d = the dataset's) or paper (the released config, d = 1280) "
        "[default: paper for a 1280-d dataset (the paper CLIP's), else tiny; a tiny prior on a 1280-d dataset "
        "needs --profile tiny and warns]",
    )
    add_config_options(parser)
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR's latest checkpoint")
    parser.add_argument(
        "--init-from", metavar="RUN", default=None,
        help="start a new run from another run's latest training state (weights, optimizer moments, step): its "
        "RUN_DIR, its final/ or one of its checkpoints; that run is only read (with --resume, RUN_DIR's own "
        "checkpoints come first)",
    )
    parser.set_defaults(run=_train_prior)
    return parser


def _train_prior(args: argparse.Namespace) -> int:
    from prior.prepare import prepare_training

    # Validate everything before Prefect starts: bad input fails in one line, in a second.
    job = prepare_training(args.data, args.output, args.profile, load_train_config(args.config, args.set),
                           args.resume, args.init_from)
    from flows.train_prior import hand, train_prior

    # The flow trains the job handed to it (it does not read the dataset again) and records the profile as resolved.
    summary = train_prior(data=args.data, output=args.output, profile=job.profile, config_file=args.config,
                          overrides=args.set, resume=args.resume, init_from=args.init_from, handed=hand(job))
    val = summary["val"]
    print(f"trained to step {summary['step']}: val loss {val['loss']:.4g}, cosine {val['cosine']:.3f}, "
          f"top-1 {val['top1']:.3f} → {summary['final']}")
    return 0
