"""`lambda-eclipse evaluate`: registered on the top-level parser by `add_parser`."""

from __future__ import annotations

import argparse
import sys

from evaluation.config import EvalConfig
from lambda_eclipse.config import describe_keys

BENCHMARKS = ("dreambench", "multibench")  # evaluation/benchmarks.py, without importing it for --help

EPILOG = """\
DATA holds one folder of photos per subject. dreambench: the folders are DreamBench subjects (dog, backpack_dog, …;
DreamBooth's dataset), each gets its 25 prompts with the class name as the subject word. multibench: the 2- and
3-subject templates filled with every ordered choice of distinct folders (a folder's word: its DreamBench class,
else its name with _ as a space).

For each prompt: evaluate.images_per_prompt images (paper: 4), scored as DreamBooth defined the metrics: DINO
(ViT-S/16 CLS cosine) and CLIP-I (CLIP image cosine), averaged over every (generated, real photo) pair and over the
prompt's subjects, and CLIP-T (cosine of each image with the prompt). OUTPUT gets images/, per_prompt.csv,
summary.md (this run next to the paper's rows) and summary.json. A rerun with the same OUTPUT continues where an
interrupted run stopped; evaluate.max_prompts can grow between runs.

config keys (--set section.key=value), with their defaults (the paper's protocol):
{config_keys}

examples:
  lambda-eclipse evaluate --benchmark dreambench --data dreambooth/dataset --prior runs/prior/final --profile paper \\
      --output out/eval-dreambench
  lambda-eclipse evaluate --benchmark multibench --data subjects/ --prior out/prior --profile tiny --output out/eval \\
      --set evaluate.max_prompts=4 --set evaluate.images_per_prompt=2 --set evaluate.steps=2
"""


def add_parser(subcommands) -> argparse.ArgumentParser:
    parser = subcommands.add_parser(
        "evaluate", help="score a prior on DreamBench or Multibench (DINO, CLIP-I, CLIP-T)",
        description="Generate the benchmark's images and score them as the paper's Table 2 (DreamBench) and Table 4 "
        "(Multibench).",
        epilog=EPILOG.format(config_keys=describe_keys(EvalConfig)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    parser.add_argument("--data", required=True, metavar="DIR", help="one folder of photos per subject")
    parser.add_argument("--prior", metavar="DIR",
                        help="prior checkpoint directory (train-prior's RUN_DIR/final, or RUN_DIR), or a cached hub id "
                        "[default: the prior registry's current prior, `lambda-eclipse priors list`]")
    parser.add_argument("--output", required=True, metavar="DIR", help="results directory (created if missing)")
    parser.add_argument("--profile", default="tiny", choices=("tiny", "paper"),
                        help="tiny (random tiny models, offline) or paper (the paper's checkpoints) [default: tiny]")
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of {section: {key: value}} overrides")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config key (after --config); repeatable, see the list below")
    parser.set_defaults(run=_evaluate)
    return parser


def _evaluate(args: argparse.Namespace) -> int:
    from evaluation.run import prepare_evaluation
    from prior.registry import resolve_prior

    # Check everything before Prefect starts and models load: bad input fails in one line, in a second.
    args.prior = resolve_prior(args.prior)
    plan = prepare_evaluation(args.benchmark, args.data, args.prior, args.output, args.profile, args.config, args.set)
    for warning in plan.generate.warnings:
        print(f"lambda-eclipse evaluate: warning: {warning}", file=sys.stderr)
    from flows.evaluate import evaluate

    result = evaluate(benchmark=args.benchmark, data=args.data, prior=args.prior, output=args.output,
                      profile=args.profile, config_file=args.config, overrides=args.set)
    for row in result["summary"]:
        print(f"{row['group']}: {row['prompts']} prompts, DINO {row['dino']:.4f}, CLIP-I {row['clip_i']:.4f}, "
              f"CLIP-T {row['clip_t']:.4f}")
    print(f"{result['evaluated']} of {result['prompts']} prompts → {result['output']}/summary.md")
    return 0
