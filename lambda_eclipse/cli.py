"""`lambda-eclipse`: the command line. Each command validates its input first and runs its Prefect flow."""

from __future__ import annotations

import argparse
import os
import sys

from evaluation.cli import add_parser as add_evaluate
from finetune.cli import add_parser as add_finetune_decoder
from generate.cli import add_parsers as add_generate_and_interpolate
from lambda_eclipse.config import add_config_options, describe_keys
from lambda_eclipse.errors import BuildError, UserError
from prior.cli import add_parser as add_train_prior
from storage.validate import add_parser as add_validate_dataset

STARTUP_TIMEOUT = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"

BUILD_EPILOG = """\
stages, in order (each rejects with a reason; rejects are kept in shards/NNNNN_rejects.parquet):
  decode → resolution → white_background → caption (BLIP-2) → nouns (spaCy) → boxes (Grounding DINO)
  → box_filters → masks (SAM) → mask_filters → subjects → crops → edge (Canny) → features (OpenCLIP)

config keys (--set section.key=value), with their defaults (the paper's values, see docs/paper-parameters.md):
{config_keys}

examples:
  lambda-eclipse build-dataset --input photos/ --output data/ --profile tiny --set resolution.min_side=256
  lambda-eclipse build-dataset --input shards/ --output data/ --profile paper --gpus-per-stage caption=0.5,masks=0.5
  lambda-eclipse build-dataset --input s3://bucket/laion/ --output s3://bucket/datasets/v1 --profile paper

A rerun with the same --output skips complete shards and rebuilds incomplete ones; inputs added since (new files in
a folder, new tars) become new shards (DIR/manifest.parquet keeps every unit's inputs). --dry-run shows the plan.
Runtime placement (does not change the dataset): --set runtime.actors.masks=2, runtime.gpus.masks=0.5,
runtime.units_in_flight=8, and the stages' batch_size keys.
--input and --output take local paths or fsspec URLs (file://, s3:// with `pip install s3fs`, gs:// with gcsfs, ...);
credentials come from the environment of every process (AWS_* variables, ~/.aws, FSSPEC_<PROTOCOL>_<OPTION>).
"""


def _build_dataset(args: argparse.Namespace) -> int:
    from tasks.plan import parse_gpus, prepare_build

    gpus = parse_gpus(args.gpus_per_stage)
    # Validate and plan before Prefect and Ray start: bad input fails in one line, in a second.
    plan = prepare_build(args.input, args.output, args.profile, args.config, args.set, args.workers, gpus)
    if args.dry_run:
        print(f"{plan.output}: {plan.summary()}")
        for unit in plan.todo[:20]:
            size = f"{unit.images} images" if unit.images is not None else f"{unit.bytes} bytes"
            print(f"  shard {unit.shard:05d}  {unit.description}  ({size})")
        if len(plan.todo) > 20:
            print(f"  … and {len(plan.todo) - 20} more")
        return 0
    from flows.build_dataset import build_dataset

    # The flow gets the config as resolved here (file + --set), not the raw strings to parse again.
    summary = build_dataset(
        inputs=args.input,
        output=args.output,
        profile=args.profile,
        workers=args.workers,
        config=plan.cfg.to_dict(),
    )
    print(
        f"{summary['accepted']} accepted, {summary['rejected']} rejected of {summary['inputs']} inputs "
        f"in {summary['shards']} shards → {summary['output']}"
    )
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="lambda-eclipse",
        description="λ-ECLIPSE (arXiv 2402.05195): build the training dataset, train the prior, generate.",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    build = commands.add_parser(
        "build-dataset",
        help="build prior-training shards from image folders or WebDataset tars",
        description="Build λ-ECLIPSE training shards (Parquet features + WebDataset pixels) from images.",
        epilog=BUILD_EPILOG.format(config_keys=describe_keys()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build.add_argument(
        "--input", action="append", required=True, metavar="PATH",
        help="a folder of images (searched recursively), a WebDataset .tar, or a folder of .tar files, as a path or "
        "an fsspec URL; repeatable",
    )
    build.add_argument(
        "--output", required=True, metavar="DIR", help="dataset directory, a path or an fsspec URL (created if missing)"
    )
    build.add_argument(
        "--profile", default="tiny", choices=("tiny", "paper", "paper-shapes"),
        help="model profile: tiny (random tiny models, offline), paper (the paper's checkpoints), "
        "paper-shapes (full-size architectures, random weights) [default: tiny]",
    )
    add_config_options(build)
    build.add_argument(
        "--workers", type=int, default=0, metavar="N", help="CPUs for the local Ray cluster [default: all]"
    )
    build.add_argument(
        "--gpus-per-stage", action="append", metavar="STAGE=FRACTION",
        help="GPU fraction per model stage (caption, nouns, boxes, masks, features), e.g. caption=0.5,masks=0.5; "
        "default 0 (CPU)",
    )
    build.add_argument(
        "--dry-run", action="store_true",
        help="plan only: print the work units, images and shards to build / already complete, and exit "
        "(starts neither Prefect nor Ray)",
    )
    build.set_defaults(run=_build_dataset)
    add_train_prior(commands)
    add_generate_and_interpolate(commands)
    add_evaluate(commands)
    add_validate_dataset(commands)
    add_finetune_decoder(commands)
    add_priors(commands)
    return top


# -- lambda-eclipse priors: the prior registry (prior/registry.py) --------------------------------------------------

PRIORS_EPILOG = """\
The registry is a folder (or fsspec URL): $LAMBDA_ECLIPSE_REGISTRY, else $LAMBDA_ECLIPSE_RUNS/registry. The retrain
deployments (prefect.yaml, flows/retrain.py) record every prior they train and promote a candidate when each of its
DreamBench scores (DINO, CLIP-I, CLIP-T) is at least the current prior's minus the configured tolerance (the first
prior always is). `generate`, `interpolate` and `evaluate` use the current prior when --prior is not given.

  retrain-on-new-dataset  on every completed build-dataset run: validate its dataset, then (only if valid) train a
                          candidate from scratch on it, evaluate, promote
  retrain-nightly         03:00 UTC: continue the current prior from its last training state for
                          train.steps_per_run more steps on the dataset it was trained on, evaluate, promote

examples:
  lambda-eclipse priors list
  lambda-eclipse priors promote prior-happy-otter      # by hand, e.g. to roll back to an earlier prior
"""


def _priors_list(args: argparse.Namespace) -> int:
    from prior.registry import Registry, table

    reg = Registry.open(args.registry)
    records = reg.records()
    if not records:
        raise UserError(f"the prior registry {reg.root} is empty: no prior has been trained into it yet "
                        "(run a retrain deployment)")
    current = reg.current()
    print(table(records, current["run"] if current else None))
    print(f"* current: {current['run']} → {current['final']}" if current else "no current prior (priors promote RUN)")
    return 0


def _priors_promote(args: argparse.Namespace) -> int:
    from prior.registry import Registry

    pointer = Registry.open(args.registry).promote(args.name, by="lambda-eclipse priors promote", reason=args.reason)
    print(f"current prior: {pointer['run']} → {pointer['final']} (was {pointer['previous'] or 'none'})")
    return 0


def add_priors(commands) -> None:
    priors = commands.add_parser(
        "priors", help="list the trained priors and promote one to current",
        description="The prior registry: every trained prior (run, dataset, steps, scores) and the current one.",
        epilog=PRIORS_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = priors.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="print the registry as a table (* marks the current prior)")
    promote = actions.add_parser("promote", help="make RUN the current prior")
    promote.add_argument("name", metavar="RUN", help="a run name from `priors list`")
    promote.add_argument("--reason", default="promoted by hand", help="recorded with the promotion")
    for action, run in ((listing, _priors_list), (promote, _priors_promote)):
        action.add_argument("--registry", metavar="DIR",
                            help="the registry folder or URL [default: $LAMBDA_ECLIPSE_REGISTRY, else "
                            "$LAMBDA_ECLIPSE_RUNS/registry]")
        action.set_defaults(run=run)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download weights implicitly
    # Prefect's embedded API server gets 20 s to start by default, which a busy machine (or a fresh database's
    # migrations) can exceed; a first command must not fail for that.
    os.environ.setdefault(STARTUP_TIMEOUT, "300")
    try:
        return args.run(args)
    except UserError as exc:
        print(f"lambda-eclipse {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BuildError as exc:
        print(f"lambda-eclipse {args.command}: failed: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        if "ephemeral Prefect API server" not in str(exc):
            raise
        print(
            f"lambda-eclipse {args.command}: error: Prefect's embedded API server did not start within "
            f"{os.environ[STARTUP_TIMEOUT]} s ({str(exc).splitlines()[0][:200]}); raise {STARTUP_TIMEOUT}, or set "
            "PREFECT_API_URL to a running server (prefect server start)",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
