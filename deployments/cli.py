"""`tradeflow`: the one command line for people.

Each subcommand is a small function that parses its arguments and calls into `core` (or, for the commands
that talk to Prefect, into `deployments`). Exit codes: 0 success, 1 the command ran and found a failure,
2 bad usage or bad settings.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from core.settings import SettingsError, get_settings

Handler = Callable[[argparse.Namespace], int]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tradeflow",
        description="Scheduled trading workflows for Interactive Brokers, orchestrated by Prefect.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from deployments import commands

    for register in commands.REGISTRY:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `tradeflow` with `argv` (default: the process arguments); returns the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    from deployments.prefect_auth import AuthFileError, export_client_auth

    try:
        settings = get_settings()  # a wrong setting fails every command at start, naming the setting
        export_client_auth(settings.prefect_home)  # the local server's password, before Prefect is imported
        return handler(args)
    except (SettingsError, AuthFileError) as exc:
        print(f"tradeflow: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
