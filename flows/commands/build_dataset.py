"""`lambda-eclipse build-dataset`: registered on the top-level parser by `add_parser`."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator

from lambda_eclipse.config import RenamedFlag, add_config_options, describe_keys
from lambda_eclipse.profile import Profile, names
from tasks.config import BuildConfig

EPILOG = """\
stages, in order (each rejects with a reason; rejects are kept in shards/NNNNN_rejects.parquet):
  (a duplicates pass first: every input hashed, copies grouped)
  decode → duplicates → resolution → white_background → caption (BLIP-2) → nouns (spaCy) → boxes (Grounding DINO)
  → box_filters → masks (SAM) → mask_filters → subjects → crops → edge (Canny) → features (OpenCLIP)

config keys (--set section.key=value), with their defaults (the paper's values, see docs/paper-parameters.md):
{config_keys}

examples:
  lambda-eclipse build-dataset --input photos/ --output data/ --profile tiny --set resolution.min_side=256
  lambda-eclipse build-dataset --input shards/ --output data/ --profile paper --gpus-per-stage caption=0.5,masks=0.5
  lambda-eclipse build-dataset --input s3://bucket/laion/ --output s3://bucket/datasets/v1 --profile paper

tuning a build before paying for it (docs/build-dataset.md, "Tuning a build"):
  1. sample and forecast:   --input photos/ --output s1/ --sample 0.01
  2. change a threshold:    --input photos/ --output s2/ --sample 0.01 --reuse s1/ --set boxes.min_logit=0.35
     (only the stages whose fingerprint changed run again, and those after them; the rest comes from s1's
     kept model outputs, shards/NNNNN_kept.parquet)
  3. the full build:        --input photos/ --output data/ --reuse s2/ --set boxes.min_logit=0.35
     (the sampled photos are not run again; the summary shows the actual numbers beside s2's forecast)

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
    plan = prepare_build(args.input, args.output, args.profile, args.config, args.set, args.ray_cpus, gpus,
                         reuse=args.reuse, sample=args.sample)
    if args.forecast is not None:
        from tasks.forecast import read_forecast

        read_forecast(args.forecast, required=True)  # a wrong path fails here, before the build
    if args.dry_run:
        print(f"{plan.output}: {plan.summary()}")
        for unit in plan.todo[:20]:
            size = f"{unit.images} images" if unit.images is not None else f"{unit.bytes} bytes"
            print(f"  shard {unit.shard:05d}  {unit.description}  ({size})")
        if len(plan.todo) > 20:
            print(f"  … and {len(plan.todo) - 20} more")
        return 0
    from flows.build_dataset import build_dataset, hand

    with _metrics_session(args, plan.cfg.runtime.ray_cpus):
        # The flow runs on the plan handed to it (it does not list the inputs again) and records the config as
        # resolved here, with the plan's summary (flows/handed.py).
        summary = build_dataset(inputs=args.input, output=args.output, profile=args.profile,
                                ray_cpus=args.ray_cpus, config=plan.cfg.to_dict(), reuse=args.reuse,
                                sample=args.sample, forecast=args.forecast, handed=hand(plan))
        print(
            f"{summary['accepted']} accepted, {summary['rejected']} rejected of {summary['inputs']} inputs "
            f"in {summary['shards']} shards → {summary['output']}", flush=True,
        )
        if "forecast" in summary:
            _print_forecast(summary["forecast"], plan.output)
        _linger(args)
    return 0


def _print_forecast(outlook: dict, output) -> None:
    from tasks.forecast import FORECAST, forecast_cost_line

    a, listing = outlook["accepted"], outlook["listing"]
    about = "about " if listing["estimated"] else ""
    print(f"forecast for all {about}{listing['images']} input images: {a['expected']} accepted samples (95 % "
          f"interval {a['low']}–{a['high']}), {outlook['subjects']} subject crops, {outlook['bytes'] / 1e9:.3g} GB",
          flush=True)
    print(f"  time: {forecast_cost_line(outlook)}", flush=True)
    print(f"  per stage and per cluster shape: {output}/{FORECAST}", flush=True)


@contextlib.contextmanager
def _metrics_session(args: argparse.Namespace, ray_cpus: int) -> Iterator[None]:
    """With --metrics-port and no RAY_ADDRESS: the local Ray, exporting on 127.0.0.1:PORT, started here so that it
    outlives the flow (which uses it as it is) for --metrics-linger seconds. On a cluster, Ray's own export serves the
    metrics and the port is not used."""
    if args.metrics_port is None:
        yield
        return
    if os.environ.get("RAY_ADDRESS"):
        print(f"--metrics-port {args.metrics_port} is not used with RAY_ADDRESS: the cluster's Ray exports the "
              "pipeline metrics on its own metrics port (docs/operate.md, Monitoring)", file=sys.stderr)
        args.metrics_port = None
        yield
        return
    from lambda_eclipse.ray_session import ray_session

    with ray_session(ray_cpus, metrics_port=args.metrics_port):
        print(f"pipeline metrics: http://127.0.0.1:{args.metrics_port}/metrics (Prometheus text format)",
              file=sys.stderr, flush=True)
        yield


def _linger(args: argparse.Namespace) -> None:
    """Keep the local metrics endpoint up after the build so that a scrape sees the final counts (Ray's workers
    report every 10 s); Ctrl-C ends the wait."""
    if args.metrics_port is None or args.metrics_linger <= 0:
        return
    print(f"keeping http://127.0.0.1:{args.metrics_port}/metrics up for {args.metrics_linger:g} s "
          "(--metrics-linger; Ctrl-C ends it)", file=sys.stderr, flush=True)
    try:
        time.sleep(args.metrics_linger)
    except KeyboardInterrupt:
        pass


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1–65535)")
    return int(text)


def add_parser(commands) -> argparse.ArgumentParser:
    build = commands.add_parser(
        "build-dataset",
        help="build prior-training shards from image folders or WebDataset tars",
        description="Build λ-ECLIPSE training shards (Parquet features + WebDataset pixels) from images.",
        epilog=EPILOG.format(config_keys=describe_keys(BuildConfig)),
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
        "--profile", default=Profile.TINY.value, choices=names(),
        help="model profile: tiny (random tiny models, offline), paper (the paper's checkpoints), "
        "paper-shapes (full-size architectures, random weights) [default: tiny]",
    )
    add_config_options(build)
    build.add_argument(
        "--ray-cpus", type=int, default=0, metavar="N",
        help="without RAY_ADDRESS: CPUs of the local Ray (the config's runtime.ray_cpus) [default: all]",
    )
    build.add_argument("--workers", type=int, dest="ray_cpus", action=RenamedFlag, new="--ray-cpus")
    build.add_argument(
        "--gpus-per-stage", action="append", metavar="STAGE=FRACTION",
        help="GPU fraction per model stage (caption, nouns, boxes, masks, features), e.g. caption=0.5,masks=0.5; "
        "default 0 (CPU)",
    )
    build.add_argument(
        "--metrics-port", type=_port, metavar="PORT",
        help="without RAY_ADDRESS: the local Ray exports the pipeline metrics (lambda_eclipse_*) for Prometheus on "
        "http://127.0.0.1:PORT/metrics; on a cluster, Ray's own metrics export serves them",
    )
    build.add_argument(
        "--metrics-linger", type=float, default=30.0, metavar="SECONDS",
        help="with --metrics-port: keep the endpoint up this long after the build, so that a scrape sees the final "
        "counts [default: 30]",
    )
    build.add_argument(
        "--reuse", metavar="DIR_OLD",
        help="an earlier dataset of the same inputs: each model stage's outputs it kept (shards/NNNNN_kept.parquet) "
        "are taken where the stage's fingerprint (its config keys, its model, the stages before it) is unchanged, so "
        "a changed threshold runs only its stage and those after it; the result equals a build from scratch",
    )
    build.add_argument(
        "--sample", type=float, metavar="N",
        help="build only a deterministic sample of the inputs, spread over their folders and tars (N below 1: a "
        "fraction, such as 0.01; else a count of photos), and forecast the whole listing: each stage's pass rate "
        "with its 95 %% interval, accepted samples, subject crops, bytes, and hours and GPU-hours on this cluster and "
        "on named cluster shapes (printed, DIR/forecast.json, a Prefect artifact)",
    )
    build.add_argument(
        "--forecast", metavar="PATH",
        help="a sample build's forecast (its dataset directory or forecast.json) to show beside this build's actual "
        "numbers in the summary [default: --reuse's, where it has one]",
    )
    build.add_argument(
        "--dry-run", action="store_true",
        help="plan only: print the work units, images and shards to build / already complete, and exit "
        "(starts neither Prefect nor Ray)",
    )
    build.set_defaults(run=_build_dataset)
    return build
