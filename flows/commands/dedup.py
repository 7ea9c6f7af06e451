"""`lambda-eclipse dedup DIR`: mark the semantic duplicates among a built dataset's accepted samples (SemDeDup,
tasks/semantic_dedup.py) in DIR/marks/semantic_duplicates/, on the Ray cluster RAY_ADDRESS names or a local Ray."""

from __future__ import annotations

import argparse

EPILOG = """\
how: the photos' CLIP embeddings (target_embedding, L2-normalised) are clustered with faiss' spherical k-means
(trained on a sample of at most 131,072 embeddings drawn by a hash of seed and key); within each cluster the samples
are taken least similar to their centroid first (SemDeDup's order, ties by key), and a sample whose cosine with a
sample kept before it is at least --threshold is marked as a duplicate of the most similar one. Clusters are
deduplicated by Ray tasks, one per partition of about 65,536 samples; no process holds all embeddings.

output: DIR/marks/semantic_duplicates/NNNNN.parquet (key, kind "duplicate", match: the kept key, score: the cosine,
detail "photo") and _summary.json, written last; a new run replaces the set. The shards are never rewritten;
train-prior skips the marked samples (data.skip_duplicates, default true). The last line printed starts with the
number of samples marked.

exit status: 0 done, 2 not a dataset / no complete shards / bad arguments.

examples:
  lambda-eclipse dedup out/dataset
  lambda-eclipse dedup s3://bucket/datasets/v3 --threshold 0.9 --clusters 5000
"""


def add_parser(subcommands) -> argparse.ArgumentParser:
    from tasks.semantic_dedup import DEFAULT_THRESHOLD

    parser = subcommands.add_parser(
        "dedup",
        help="mark semantic duplicates (SemDeDup on the photos' CLIP embeddings) beside the shards",
        description="Mark near-duplicate photos of a built λ-ECLIPSE dataset (SemDeDup, arXiv 2303.09540); "
                    "the shards stay as they are, train-prior skips the marked samples.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("data", metavar="DIR", help="dataset directory written by build-dataset (path or fsspec URL)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, metavar="COS",
                        help=f"cosine at or above which two photos are duplicates, in (0, 1] [default: "
                             f"{DEFAULT_THRESHOLD}]")
    parser.add_argument("--clusters", type=int, default=None, metavar="K",
                        help="k-means clusters [default: √N for N samples]; clusters expected above 16,384 samples "
                             "are split")
    parser.add_argument("--seed", type=int, default=0, help="k-means seed and the training sample's hash [default: 0]")
    parser.set_defaults(run=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    from lambda_eclipse.ray_session import ray_session
    from storage.dataset_meta import require_dataset
    from tasks.semantic_dedup import plan, semantic_dedup

    require_dataset(args.data)
    plan(args.data, args.threshold, args.clusters)  # every input error before Ray starts
    with ray_session():
        result = semantic_dedup(args.data, args.threshold, args.clusters, args.seed,
                                log=lambda line: print(line, flush=True))
    print(result.line(args.data), flush=True)
    return 0
