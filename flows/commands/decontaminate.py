"""`lambda-eclipse decontaminate DIR --against BENCH_DIR`: mark the training samples that match a benchmark's images
(evaluation/leaks.py, through its Prefect flow or, with --no-flow, in process)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lambda_eclipse.errors import UserError
from storage.dataset_meta import require_dataset

EPILOG = """\
BENCH_DIR holds one folder of photos per subject, as `evaluate --data` reads it: DreamBench's subjects (dog,
backpack_dog, …) and the concepts Multibench adds (bird, hat, park, …) alike. Every photo (<key>.jpg) and subject
crop (<key>.subj<i>.png) of the dataset's tars is compared with every benchmark image:

  1. perceptual hash (64-bit pHash): a match within --max-distance bits (a copy, resized, re-compressed or mirrored)
  2. CLIP image embedding, for what the hash misses: the shard's target_embedding and subject_embeddings against the
     benchmark images' embeddings by the dataset's own CLIP (dataset.json's profile and models); a match at a cosine
     of at least --min-similarity

Each matching sample gets one mark (its strongest evidence) in DIR/marks/leaks/ (storage/marks.py): key, the benchmark
image (relative to BENCH_DIR), score (1 − Hamming/64, or the cosine) and detail ("photo" or "subject crop i"); the
summary records the benchmark, the thresholds, the time and the shards checked. train-prior skips the marked samples
(data.skip_leaks=true, the default). DIR/marks/leaks/report.md and report.png show each training sample beside its
benchmark image. A new run replaces the set. The scan runs as Ray tasks, --shards-per-task shards each (RAY_ADDRESS
joins a cluster, else a local Ray starts); BENCH_DIR must be readable where they run.

The last line printed starts with the number of matching samples; the exit status is 0 whether or not any matched
(1 on a failure, 2 on bad arguments).

examples:
  lambda-eclipse decontaminate out/dataset --against dreambooth/dataset
  lambda-eclipse decontaminate s3://bucket/datasets/v3 --against /data/dreambench --max-distance 6
"""


def add_parser(subcommands) -> argparse.ArgumentParser:
    from evaluation.leaks import MAX_DISTANCE, MIN_SIMILARITY, SHARDS_PER_TASK  # no torch: light enough for --help

    parser = subcommands.add_parser(
        "decontaminate", help="mark the training samples that match a benchmark's images (leaks)",
        description="Find the dataset's samples whose photo or subject crops match a benchmark image, mark them so "
        "that train-prior skips them, and write a report.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("data", metavar="DIR", help="dataset written by build-dataset (path or fsspec URL)")
    parser.add_argument("--against", required=True, metavar="BENCH_DIR",
                        help="the benchmark: one folder of photos per subject (as evaluate --data)")
    parser.add_argument("--max-distance", type=int, default=MAX_DISTANCE, metavar="BITS",
                        help="a pHash within this many bits (of 64) of a benchmark image's matches [default: "
                        f"{MAX_DISTANCE}: copies land within 0–2 bits, different photos ≥ 14]")
    parser.add_argument("--min-similarity", type=float, default=None, metavar="COS",
                        help="a CLIP image cosine of at least this matches [default: per the dataset's profile: "
                        + ", ".join(f"{p} {v}" for p, v in MIN_SIMILARITY.items())
                        + " (random weights: only copies)]")
    parser.add_argument("--shards-per-task", type=int, default=SHARDS_PER_TASK, metavar="N",
                        help=f"shards per Ray task [default: {SHARDS_PER_TASK}]")
    parser.add_argument("--no-flow", action="store_true",
                        help="run without Prefect (no flow run, no artifacts); same marks, report and output")
    parser.set_defaults(run=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    require_dataset(args.data)
    if not Path(args.against).is_dir():
        raise UserError(f"--against {args.against} is not a directory; it must hold one folder of photos per subject "
                        "(as evaluate --data)")
    if args.no_flow:
        from evaluation.leaks import Thresholds, find_leaks

        result = find_leaks(args.data, args.against,
                            Thresholds(args.max_distance, args.min_similarity, args.shards_per_task), log=print)
        line = result.line()
    else:
        from flows.decontaminate import decontaminate  # Prefect is imported only by a command that runs a flow

        line = decontaminate(data=args.data, against=args.against, max_distance=args.max_distance,
                             min_similarity=args.min_similarity, shards_per_task=args.shards_per_task)["line"]
    print(line)
    return 0
