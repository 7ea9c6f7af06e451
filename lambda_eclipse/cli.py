"""`lambda-eclipse`: the command line. Each command validates its input first and runs its Prefect flow."""

from __future__ import annotations

import argparse
import os
import sys

from lambda_eclipse.config import describe_keys
from lambda_eclipse.errors import UserError
from lambda_eclipse.evaluate.cli import add_parser as add_evaluate
from lambda_eclipse.generate.cli import add_parsers as add_generate_and_interpolate
from lambda_eclipse.prior.cli import add_parser as add_train_prior
from lambda_eclipse.storage.validate import add_parser as add_validate_dataset

BUILD_EPILOG = """\
stages, in order (each rejects with a reason; rejects are kept in shards/NNNNN_rejects.parquet):
  decode → resolution → white_background → caption (BLIP-2) → nouns (spaCy) → boxes (Grounding DINO)
  → box_filters → masks (SAM) → mask_filters → subjects → crops → edge (Canny) → features (OpenCLIP)

config keys (--set section.key=value), with their defaults (the paper's values, see shared/DESIGN.md):
{config_keys}

examples:
  lambda-eclipse build-dataset --input photos/ --output data/ --profile tiny --set resolution.min_side=256
  lambda-eclipse build-dataset --input shards/ --output data/ --profile paper --gpus-per-stage caption=0.5,masks=0.5
  lambda-eclipse build-dataset --input s3://bucket/laion/ --output s3://bucket/datasets/v1 --profile paper

A rerun with the same --output skips complete shards and rebuilds incomplete ones.
--input and --output take local paths or fsspec URLs (file://, s3:// with `pip install s3fs`, gs:// with gcsfs, ...);
credentials come from the environment of every process (AWS_* variables, ~/.aws, FSSPEC_<PROTOCOL>_<OPTION>).
"""


def _build_dataset(args: argparse.Namespace) -> int:
    from lambda_eclipse.tasks.plan import parse_gpus, prepare_build

    gpus = parse_gpus(args.gpus_per_stage)
    # Validate everything before Prefect and Ray start: bad input fails in one line, in a second.
    prepare_build(args.input, args.output, args.profile, args.config, args.set, args.workers, gpus)
    from lambda_eclipse.flows.build_dataset import build_dataset

    summary = build_dataset(
        inputs=args.input,
        output=args.output,
        profile=args.profile,
        config_file=args.config,
        overrides=args.set,
        workers=args.workers,
        gpus_per_stage=gpus,
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
    build.add_argument("--config", metavar="FILE.yaml", help="YAML file of {section: {key: value}} overrides")
    build.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override one config key (after --config); repeatable, see the list below",
    )
    build.add_argument("--workers", type=int, default=0, metavar="N", help="CPUs for the local Ray cluster [default: all]")
    build.add_argument(
        "--gpus-per-stage", action="append", metavar="STAGE=FRACTION",
        help="GPU fraction per model stage (caption, nouns, boxes, masks, features), e.g. caption=0.5,masks=0.5; "
        "default 0 (CPU)",
    )
    build.set_defaults(run=_build_dataset)
    add_train_prior(commands)
    add_generate_and_interpolate(commands)
    add_evaluate(commands)
    add_validate_dataset(commands)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download weights implicitly
    try:
        return args.run(args)
    except UserError as exc:
        print(f"lambda-eclipse {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
