"""`lambda-eclipse evaluate`: registered on the top-level parser by `add_parser`."""

from __future__ import annotations

import argparse
import sys

from evaluation.config import EVAL_PROFILES, EvalConfig
from lambda_eclipse.config import add_config_options, describe_keys
from lambda_eclipse.profile import names

BENCHMARKS = ("dreambench", "multibench")  # evaluation/benchmarks.py, without importing it for --help

EPILOG = """\
DATA holds one folder of photos per subject. dreambench: the folders are DreamBench subjects (dog, backpack_dog, …;
DreamBooth's dataset), each gets its 25 prompts with the class name as the subject word. multibench: the paper's
2- and 3-subject templates (Appendix F, Table 8) filled by role: each slot takes the folders whose word belongs to
the slot's Table 9 categories (a living subject first, then a scene, wearable or object where the template says),
never the same word twice, sampled with a fixed seed to the paper's 904 / 1,476 prompts where more fit (a folder's
word: its DreamBench class, else its name with _ as a space and a trailing _N dropped). With
evaluate.multibench_files=DIR the prompts are read from DIR's prompt files instead (the authors' released Multibench
prompts: every DIR/*.jsonl, one {{"prompt": "a dog wearing a hat", "subjects": ["dog", "hat"]}} per line, naming
--data folders in the order their words occur), as they are.

--canny-from DIR: Table 5's protocol, each prompt's images controlled by the Canny edge map of DIR/<prompt id>.png
(the paper's: Stable Diffusion v1.5 images of the DreamBench prompts), made as generate --canny makes it for the
prior. ConceptBed (Table 3, CCD) is not implemented: it needs its dataset and oracle model, not available offline.

For each prompt: evaluate.images_per_prompt images (paper: 4), scored as DreamBooth defined the metrics: DINO
(ViT-S/16 CLS cosine) and CLIP-I (CLIP image cosine), averaged over every (generated, real photo) pair and over the
prompt's subjects, and CLIP-T (cosine of each image with the prompt). CLIP-I and CLIP-T use evaluate.clip_model
(default OpenAI CLIP ViT-B/32, as public DreamBooth-metric code does; not the generator's own conditioning encoder
bigG, which would favour the method; "conditioning" uses bigG). OUTPUT gets images/, per_prompt.csv (with each
prompt's segmentation: "no box: NAME" when Grounding DINO found nothing in a subject's reference photo, which is then
embedded whole), summary.md (this run next to the paper's reported rows, the encoders used, segmentation failures per
subject) and summary.json. A rerun with the same OUTPUT continues where an interrupted run stopped;
evaluate.max_prompts can grow between runs.

The models run in evaluate.actors Ray actors (RAY_ADDRESS joins a cluster, else a local Ray starts), each asking for
runtime.gpus GPUs when the cluster has any; seeds follow each prompt's place in the benchmark, so the numbers do not
depend on the number of actors. Paths (--data, --prior, --decoder) must be readable where the actors run.

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
    parser.add_argument("--profile", choices=names(EVAL_PROFILES),
                        help="tiny (random tiny models, offline) or paper (the paper's checkpoints) [default: the "
                        "prior checkpoint's own, from its embedding size: 32-d tiny, 1280-d paper]")
    parser.add_argument("--decoder", metavar="DIR",
                        help="a fine-tuned decoder: finetune-decoder's output directory (DIR/unet/, "
                        "DIR/finetune.json) or its unet/ folder [default: the profile's Kandinsky 2.2 decoder]")
    parser.add_argument("--canny-from", metavar="DIR",
                        help="Table 5's protocol: control each prompt by the Canny edge map of DIR/<prompt id>.png "
                        "(DreamBench: DIR/dog/03.png); sets evaluate.canny_from")
    add_config_options(parser)
    parser.set_defaults(run=_evaluate)
    return parser


def _evaluate(args: argparse.Namespace) -> int:
    from evaluation.run import prepare_evaluation
    from prior.registry import resolve_prior

    # Check everything before Prefect starts and models load: bad input fails in one line, in a second.
    args.prior = resolve_prior(args.prior)
    if args.canny_from:  # last: it wins over --config and --set, as the flag the user typed
        args.set = [*args.set, f"evaluate.canny_from={args.canny_from}"]
    plan = prepare_evaluation(args.benchmark, args.data, args.prior, args.output, args.profile, args.config, args.set,
                              args.decoder)
    for warning in plan.generate.warnings:
        print(f"lambda-eclipse evaluate: warning: {warning}", file=sys.stderr)
    from flows.evaluate import evaluate, hand

    # The flow runs on the plan handed to it (it does not read the benchmark and the checkpoints again) and records
    # the prior and the profile as resolved.
    result = evaluate(benchmark=args.benchmark, data=args.data, prior=args.prior, output=args.output,
                      profile=plan.generate.profile, config_file=args.config, overrides=args.set, decoder=args.decoder,
                      handed=hand(plan))
    for row in result["summary"]:
        print(f"{row['group']}: {row['prompts']} prompts, DINO {row['dino']:.4f}, CLIP-I {row['clip_i']:.4f}, "
              f"CLIP-T {row['clip_t']:.4f}")
    for subject, count in result["segmentation_failures"].items():
        print(f"segmentation found no box in {subject}'s reference photo ({count} prompt(s) used it whole)")
    print(f"{result['evaluated']} of {result['prompts']} prompts → {result['output']}/summary.md")
    return 0
