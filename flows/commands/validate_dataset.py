"""`lambda-eclipse validate-dataset DIR`: the dataset checker (storage/validate.py), through its Prefect flow or, with
--no-flow, in process."""

from __future__ import annotations

import argparse
import json

from storage.dataset_meta import require_dataset
from storage.validate import DatasetInvalid, validate

EPILOG = """\
checks, per shard with _stats.json: sha256 and size of every file it lists; Parquet schema and embedding dims
(vs dataset.json); row counts and split counts vs _stats.json; each row's split = its key's hash split; no NaN or
infinite values; the rejects' counts by stage; the tar's keys and members. Across shards: every key unique; the
train fraction within --split-tolerance of the configured one (default: 4 binomial standard deviations).

exit status: 0 valid, 1 invalid (every problem is printed, naming its shard), 2 not a dataset / bad arguments.

examples:
  lambda-eclipse validate-dataset out/dataset
  lambda-eclipse validate-dataset s3://bucket/datasets/v3 --json report.json
"""


def add_parser(subcommands) -> argparse.ArgumentParser:
    parser = subcommands.add_parser(
        "validate-dataset",
        help="check every shard of a built dataset against its _stats.json and dataset.json",
        description="Read back every shard of a λ-ECLIPSE dataset and check it; prints a report.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("data", metavar="DIR", help="dataset directory written by build-dataset (path or fsspec URL)")
    parser.add_argument("--split-tolerance", type=float, default=None, metavar="X",
                        help="largest allowed |train fraction − configured| [default: 4 binomial standard deviations]")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE")
    parser.add_argument("--no-flow", action="store_true",
                        help="check without Prefect (no flow run, no artifacts); same checks and exit status")
    parser.set_defaults(run=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    require_dataset(args.data)
    if args.no_flow:
        report = validate(args.data, args.split_tolerance).to_dict()
    else:
        from flows.validate_dataset import validate_dataset  # Prefect is imported only by a command that runs a flow

        try:
            report = validate_dataset(data=args.data, split_tolerance=args.split_tolerance)
        except DatasetInvalid as exc:  # the flow run failed with this reason; the report is attached
            report = exc.report
    print(report["text"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0 if report["ok"] else 1
