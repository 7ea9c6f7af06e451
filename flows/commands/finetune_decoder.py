"""`lambda-eclipse finetune-decoder`: registered on the top-level parser by `add_parser`."""

from __future__ import annotations

import argparse
import os

from finetune.config import FINETUNE_PROFILES, FinetuneConfig, load_finetune_config
from lambda_eclipse.config import add_config_options, describe_keys
from lambda_eclipse.profile import Profile, names

EPILOG = """\
Concept fine-tuning of the Kandinsky 2.2 decoder (paper §3.3, Eq. 2, Appendix D): only the decoder's UNet is trained,
to denoise the MoVQ latents of each subject's photos conditioned on z_x, the CLIP image embedding of the whole photo,
as the authors' script (data.segment=true: of the photo with its subject segmented, Grounding DINO finding the subject
word and SAM masking it, as evaluate does; a photo where nothing is found is embedded whole, and finetune.json says
so). The prior is not touched: generate and evaluate then use the new UNet with the same prior. AdamW at a constant
1e-5 with no warm-up and no prior-preservation loss (the paper's), all subjects in one model (each step draws photos
uniformly from all subjects'). As the authors' README: batch 1 × finetune.gradient_accumulation=4 per step, no flips,
and finetune.max_steps=0 trains 400 for one concept, 8,000 for 30, interpolated between (≈ 262 more per concept).
The segmentation word of a subject is its DreamBench class when NAME is a DreamBench subject folder
(backpack_dog → backpack), else NAME with "_" read as a space.

OUTPUT gets unet/ (UNet2DConditionModel.save_pretrained, safetensors), finetune.json (subjects, photos and how each
was embedded, profile, base decoder, steps, config), checkpoints/step-NNNNNNNN/ (UNet, optimizer, RNG: --resume
continues exactly where the run stopped, mid-accumulation too), references/<subject>/ (the embedded crops) and
metrics.jsonl.

config keys (--set section.key=value), with their defaults (the paper's values where it gives them, else those of
diffusers' Kandinsky 2.2 decoder fine-tuning script):
{config_keys}

On a GPU: runtime.precision=bf16 (default there) or fp16 autocast, runtime.gradient_checkpointing=true for less
memory, finetune.optimizer=adamw8bit for 8-bit AdamW states (needs `pip install bitsandbytes`).

examples:
  lambda-eclipse finetune-decoder --subject dog=photos/dog --subject backpack=photos/backpack \\
      --output out/decoder --profile tiny --set finetune.max_steps=20
  lambda-eclipse finetune-decoder --subject dog=dreambench/dog --output runs/decoder-dog --profile paper \\
      --set finetune.max_steps=400
  lambda-eclipse finetune-decoder --subject dog=dreambench/dog --output runs/decoder-dog --profile paper --resume
"""


def add_parser(subcommands) -> argparse.ArgumentParser:
    parser = subcommands.add_parser(
        "finetune-decoder",
        help="fine-tune the Kandinsky 2.2 decoder UNet on subjects' photos (paper §3.3)",
        description="Fine-tune the Kandinsky 2.2 decoder UNet on reference photos of one or more subjects.",
        epilog=EPILOG.format(config_keys=describe_keys(FinetuneConfig)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--subject", action="append", required=True, metavar="NAME=DIR",
        help="a subject and the folder of its photos (JPEG, PNG, WebP, …); repeatable: all subjects train one model",
    )
    parser.add_argument("--output", required=True, metavar="DIR", help="local output directory (created if missing)")
    parser.add_argument(
        "--profile", default=Profile.TINY.value, choices=names(FINETUNE_PROFILES),
        help="model profile: tiny (random tiny models, offline), paper (CLIP bigG, Grounding DINO, SAM and the "
        "kandinsky-2-2-decoder checkpoints), paper-shapes (full-size, random weights: for throughput) [default: tiny]",
    )
    add_config_options(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue from DIR's latest checkpoint (with the same subjects and settings), or start "
                        "afresh if it has none")
    parser.set_defaults(run=_finetune_decoder)
    return parser


def _finetune_decoder(args: argparse.Namespace) -> int:
    from finetune.prepare import place, prepare_finetune

    # Validate everything before Prefect starts: bad input fails in one line, in a second.
    job = prepare_finetune(args.subject, args.output, args.profile, load_finetune_config(args.config, args.set),
                           args.resume)
    if not os.environ.get("RAY_ADDRESS"):  # the flow starts a local Ray: this machine's GPUs are the cluster's
        import torch

        place(job, torch.cuda.device_count())
    from flows.finetune_decoder import finetune_decoder, hand

    # The flow trains the job handed to it (it does not read the photos again).
    record = finetune_decoder(subjects=args.subject, output=args.output, profile=args.profile, config_file=args.config,
                              overrides=args.set, resume=args.resume, handed=hand(job))
    photos = sum(len(s["photos"]) for s in record["subjects"])
    print(f"fine-tuned {record['steps']} steps on {photos} photo(s) of {len(record['subjects'])} subject(s): loss "
          f"{record['loss']:.4g} → {record['output']}/unet")
    return 0
