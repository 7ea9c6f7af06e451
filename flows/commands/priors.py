"""`lambda-eclipse priors list|promote`: the prior registry (prior/registry.py)."""

from __future__ import annotations

import argparse

from lambda_eclipse.errors import UserError

PRIORS_EPILOG = """\
The registry is a folder (or fsspec URL): $LAMBDA_ECLIPSE_REGISTRY, else $LAMBDA_ECLIPSE_RUNS/registry. The retrain
deployments (prefect.yaml, flows/retrain.py) record every prior they train and promote a candidate when each of its
DreamBench scores (DINO, CLIP-I, CLIP-T) is at least the current prior's minus the configured tolerance (the first
prior always is). `generate`, `interpolate` and `evaluate` use the current prior when --prior is not given.

A prior trained with its provenance recorded adds SHARDS (shards read), SKIPPED (marked samples left out, per mark
set: leaks, semantic_duplicates) and LEAKS: checked (its dataset was checked against the benchmark it is evaluated
on, and no marked leak was trained on), LEAK (flagged: no leak check, another benchmark, shards changed since the
check, or leaks trained on with data.skip_leaks=false; each flagged prior's reason follows the table), ? for a
record written before provenance.

  retrain-on-new-dataset  on every completed build-dataset run: validate its dataset, then (only if valid) train a
                          candidate from scratch on it, evaluate, promote
  retrain-nightly         03:00 UTC: continue the current prior from its last training state for
                          train.steps_per_run more steps on the dataset it was trained on, evaluate, promote

examples:
  lambda-eclipse priors list
  lambda-eclipse priors promote prior-happy-otter      # by hand, e.g. to roll back to an earlier prior
"""


def _priors_list(args: argparse.Namespace) -> int:
    from prior.registry import Registry, flagged, table

    reg = Registry.open(args.registry)
    records = reg.records()
    if not records:
        raise UserError(f"the prior registry {reg.root} is empty: no prior has been trained into it yet "
                        "(run a retrain deployment)")
    current = reg.current()
    print(table(records, current["run"] if current else None))
    print(f"* current: {current['run']} → {current['final']}" if current else "no current prior (priors promote RUN)")
    for line in flagged(records):
        print(line)
    return 0


def _priors_promote(args: argparse.Namespace) -> int:
    from prior.registry import Registry

    pointer = Registry.open(args.registry).promote(args.name, by="lambda-eclipse priors promote", reason=args.reason)
    print(f"current prior: {pointer['run']} → {pointer['final']} (was {pointer['previous'] or 'none'})")
    return 0


def add_parser(commands) -> None:
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
