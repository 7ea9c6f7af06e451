"""`lambda-eclipse generate` and `lambda-eclipse interpolate`: registered on the top-level parser by `add_parsers`."""

from __future__ import annotations

import argparse
import sys
from typing import TypedDict

from generate.config import GUIDANCE, INTERPOLATE_GUIDANCE, GenerateConfig
from lambda_eclipse.config import add_config_options, describe_keys
from lambda_eclipse.profile import names

GENERATE_EPILOG = """\
Each --subject binds its WORD in the prompt (whole word, any case; the k-th --subject for a word binds its k-th
occurrence) and puts the subject's CLIP image embedding at that word's tokens. The image is used as given (padded
to a white square), through a mask (white = subject), or segmented with Grounding DINO + SAM (--segment).
Defaults follow the paper: 50 DDIM steps, guidance 7.5, the all-zero image's CLIP embedding as the negative image
embedding and (without --canny) as the control. --canny's edge map is made as the prior's training data made theirs
(its training.json), and for the released checkpoint as its inference code does: Canny(100, 200) at the image's
own size; each image's JSON says which.

--batch FILE.jsonl, one JSON object per line (paths relative to the file; seed/num_images default to the flags):
  {{"prompt": "a dog wearing a hat", "subjects": {{"dog": "dog.jpg", "hat": "hat.png"}}}}
  {{"prompt": "a dog and a dog", "subjects": [{{"word": "dog", "image": "a.jpg", "mask": "a_mask.png"}},
                                           {{"word": "dog", "image": "b.jpg"}}], "canny": "edges.jpg", "seed": 3}}

OUTPUT gets NNNN-<prompt>-K.png with NNNN-<prompt>-K.json (prompt, subjects, seed, steps, guidance, model ids,
prior sha256, decoder: "base" or the fine-tuned UNet's path and sha256) per image, and contact_sheet.png when there
is more than one image.

The models run in a Ray actor (RAY_ADDRESS joins a cluster, else a local Ray starts) that asks for runtime.gpus GPUs
when the cluster has any; paths (--prior, --decoder, images) must be readable where the actor runs.

config keys (--set section.key=value), with their defaults:
{config_keys}

examples:
  lambda-eclipse generate --prompt "a dog wearing a hat on the beach" --subject dog=dog.jpg --subject hat=hat.png \\
      --prior runs/prior/final --profile paper --num-images 4 --output out/gen
  lambda-eclipse generate --batch prompts.jsonl --prior out/prior --profile tiny --steps 2 --output out/gen
"""

INTERPOLATE_EPILOG = """\
Corners are top-left, top-right, bottom-left, bottom-right (2 corners: the ends of one row); each is a
comma-separated list of WORD=IMAGE[:MASK]. The prior predicts each corner's embedding; cells mix them bilinearly
and are all rendered with the same seed (paper Fig. 7), at guidance 4.0 as the released interpolation script.
OUTPUT gets interpolation.png, interpolation.json and embeddings.npy (rows × columns × d).

example (paper Fig. 7: two dogs × two hats):
  lambda-eclipse interpolate --prompt "a dog wearing a hat" --prior runs/prior/final --profile paper --steps 4 \\
      --corners dog=dog1.jpg,hat=hat1.png dog=dog2.jpg,hat=hat1.png \\
                dog=dog1.jpg,hat=hat2.png dog=dog2.jpg,hat=hat2.png \\
      --output out/interp
"""


def _common(parser: argparse.ArgumentParser, guidance: float) -> None:
    parser.add_argument("--prior", metavar="DIR",
                        help="prior checkpoint directory (train-prior's RUN_DIR/final, or RUN_DIR), or a cached hub id "
                        "[default: the prior registry's current prior, `lambda-eclipse priors list`]")
    parser.add_argument("--profile", choices=names(),
                        help="model profile: tiny (random tiny models, offline), paper (CLIP bigG + Kandinsky 2.2 "
                        "decoder checkpoints), paper-shapes (full-size, random weights) [default: the prior "
                        "checkpoint's own, from its embedding size: 32-d tiny, 1280-d paper; a profile whose CLIP "
                        "gives another size is an error]")
    parser.add_argument("--decoder", metavar="DIR",
                        help="a fine-tuned decoder: finetune-decoder's output directory (DIR/unet/, "
                        "DIR/finetune.json) or its unet/ folder [default: the profile's Kandinsky 2.2 decoder]")
    parser.add_argument("--seed", type=int, default=0, help="[default: 0]")
    parser.add_argument("--guidance", type=float, default=guidance,
                        help=f"classifier-free guidance scale [default: {guidance}]")
    parser.add_argument("--height", type=int, metavar="PX", help="[default: 64 on tiny, 512 otherwise]")
    parser.add_argument("--width", type=int, metavar="PX", help="[default: 64 on tiny, 512 otherwise]")
    parser.add_argument("--segment", action="store_true",
                        help="segment subject images without a mask (Grounding DINO on the word, then SAM)")
    parser.add_argument("--output", required=True, metavar="DIR", help="output directory (created if missing)")
    add_config_options(parser)


def add_parsers(subcommands) -> None:
    keys = describe_keys(GenerateConfig)
    gen = subcommands.add_parser(
        "generate", help="generate images from a prompt and subject images (and a Canny edge map)",
        description="λ-ECLIPSE prior → Kandinsky 2.2 decoder: personalised text-to-image generation.",
        epilog=GENERATE_EPILOG.format(config_keys=keys), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gen.add_argument("--prompt", help="the prompt; each subject's word must be in it")
    gen.add_argument("--subject", action="append", metavar="WORD=IMAGE[:MASK]",
                     help="a subject: its word in the prompt and its image (optional mask, white = subject); "
                     "repeatable")
    gen.add_argument("--canny", metavar="IMAGE", help="control the layout by this image's Canny edge map")
    gen.add_argument("--batch", metavar="FILE.jsonl", help="many prompts, one model load (see below)")
    gen.add_argument("--num-images", type=int, default=1, metavar="N", help="images per prompt [default: 1]")
    gen.add_argument("--steps", type=int, default=50, help="DDIM steps [default: 50]")
    _common(gen, GUIDANCE)
    gen.set_defaults(run=_generate)

    interp = subcommands.add_parser(
        "interpolate", help="a grid of images between 2 or 4 concept sets (paper Fig. 7)",
        description="Bilinear interpolation of λ-ECLIPSE embeddings between corner concept sets, fixed seed.",
        epilog=INTERPOLATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    interp.add_argument("--prompt", action="append", required=True,
                        help="the prompt of every corner, or one per corner (repeat it)")
    interp.add_argument("--corners", nargs="+", required=True, metavar="WORD=IMAGE[:MASK],…",
                        help="2 or 4 concept sets")
    interp.add_argument("--steps", type=int, default=4,
                        help="cells per side of the grid, corners included [default: 4]")
    interp.add_argument("--inference-steps", type=int, default=50, metavar="N", help="DDIM steps [default: 50]")
    _common(interp, INTERPOLATE_GUIDANCE)  # the released interpolation script's
    interp.set_defaults(run=_interpolate)


class _Settings(TypedDict):
    """The flags that `prepare` and both flows take alike."""

    profile: str | None
    guidance: float
    height: int | None
    width: int | None
    segment: bool
    decoder: str | None


def _settings(args: argparse.Namespace) -> _Settings:
    return _Settings(profile=args.profile, guidance=args.guidance, height=args.height, width=args.width,
                     segment=args.segment, decoder=args.decoder)


def _generate(args: argparse.Namespace) -> int:
    from generate.config import load_generate_config
    from generate.plan import prepare
    from generate.requests import requests_from_args
    from prior.registry import resolve_prior

    # Check everything before Prefect starts and models load: bad input fails in one line, in a second.
    args.prior = resolve_prior(args.prior)
    cfg = load_generate_config(args.config, args.set)
    requests = requests_from_args(args.prompt, args.subject, args.canny, args.batch, args.seed, args.num_images)
    settings = _settings(args)
    plan = prepare(requests, args.prior, args.output, cfg=cfg, steps=args.steps, **settings)
    for warning in plan.warnings:
        print(f"lambda-eclipse generate: warning: {warning}", file=sys.stderr)
    from flows.generate import generate, hand

    # The flow runs on the plan handed to it (it does not read the images and checkpoints again) and records the prior
    # and the profile as resolved.
    settings["profile"] = plan.profile
    summary = generate(prior=args.prior, output=args.output, prompt=args.prompt, subjects=args.subject,
                       canny=args.canny, batch=args.batch, num_images=args.num_images, seed=args.seed,
                       steps=args.steps, config_file=args.config, overrides=args.set, **settings, handed=hand(plan))
    sheet = f", contact sheet {summary['contact_sheet']}" if summary["contact_sheet"] else ""
    print(f"{len(summary['images'])} image(s) → {summary['output']}{sheet}")
    return 0


def _interpolate(args: argparse.Namespace) -> int:
    from generate.config import load_generate_config
    from generate.plan import prepare
    from generate.requests import check_grid, corner_requests
    from prior.registry import resolve_prior

    args.prior = resolve_prior(args.prior)
    check_grid(len(args.corners), args.steps)
    cfg = load_generate_config(args.config, args.set)
    settings = _settings(args)
    plan = prepare(corner_requests(args.prompt, args.corners, args.seed), args.prior, args.output, cfg=cfg,
                   steps=args.inference_steps, **settings)
    for warning in plan.warnings:
        print(f"lambda-eclipse interpolate: warning: {warning}", file=sys.stderr)
    from flows.generate import hand, interpolate

    settings["profile"] = plan.profile  # as resolved, as generate records it
    summary = interpolate(prior=args.prior, output=args.output, prompts=args.prompt, corners=args.corners,
                          steps=args.steps, seed=args.seed, inference_steps=args.inference_steps,
                          config_file=args.config, overrides=args.set, **settings, handed=hand(plan))
    print(f"{summary['rows']}×{summary['columns']} grid → {summary['grid']}")
    return 0
