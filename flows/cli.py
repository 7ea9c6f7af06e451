"""`lambda-eclipse`: the command line. Each command validates its input first and runs its Prefect flow; one module
per command in flows/commands/."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from flows.commands import (
    build_dataset,
    decontaminate,
    dedup,
    evaluate,
    finetune_decoder,
    generate,
    priors,
    train_prior,
    validate_dataset,
)
from lambda_eclipse.config import Deprecated
from lambda_eclipse.errors import BuildError, UserError

STARTUP_TIMEOUT = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
_FORMAT_WARNING = warnings.formatwarning


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """An old key or flag is the user's to rename: one line naming the new one, not this file's source line."""
    if issubclass(category, Deprecated):
        return f"lambda-eclipse: warning: {message}\n"
    return _FORMAT_WARNING(message, category, filename, lineno, line)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="lambda-eclipse",
        description="λ-ECLIPSE (arXiv 2402.05195): build the training dataset, train the prior, generate.",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    build_dataset.add_parser(commands)
    train_prior.add_parser(commands)
    generate.add_parsers(commands)
    evaluate.add_parser(commands)
    validate_dataset.add_parser(commands)
    finetune_decoder.add_parser(commands)
    priors.add_parser(commands)
    dedup.add_parser(commands)
    decontaminate.add_parser(commands)
    return top


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _format_warning
    args = parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download weights implicitly
    # Prefect's embedded API server gets 20 s to start by default, which a busy machine (or a fresh database's
    # migrations) can exceed; a first command must not fail for that.
    os.environ.setdefault(STARTUP_TIMEOUT, "300")
    # The embedded API server's telemetry cannot be sent from a machine without internet access, and its failure is
    # logged as an ERROR in a run that has none; an operator who wants telemetry sets the variable to true.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Prefect's console format for every command: a library's call on the root logger before Prefect is imported
    # (open_clip's get_tokenizer calls logging.info while a command checks its input) would install logging's default
    # format, which Prefect then keeps; a root logger with a handler is left alone, and Prefect replaces this one.
    logging.getLogger().addHandler(logging.NullHandler())
    try:
        return args.run(args)
    except UserError as exc:
        print(f"lambda-eclipse {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BuildError as exc:
        print(f"lambda-eclipse {args.command}: failed: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        if "ephemeral Prefect API server" not in str(exc):
            raise
        print(
            f"lambda-eclipse {args.command}: error: Prefect's embedded API server did not start within "
            f"{os.environ[STARTUP_TIMEOUT]} s ({str(exc).splitlines()[0][:200]}); raise {STARTUP_TIMEOUT}, or set "
            "PREFECT_API_URL to a running server (prefect server start)",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
