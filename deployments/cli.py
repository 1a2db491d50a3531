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


EXAMPLES = {
    "schedule": "tradeflow schedule --from 2026-11-27 --to 2026-11-27 --deployment ema-entry",
    "sql": 'tradeflow sql "SELECT * FROM v_daily_pnl ORDER BY session DESC LIMIT 10"',
    "backtest": "tradeflow backtest ema --from 2020-01-01 --to 2025-12-31 --out reports/ema",
    "train": "tradeflow train --symbols AAPL TSLA",
    "evaluate": "tradeflow evaluate mtf --symbols AAPL --folds 4",
    "paper-exchange": "tradeflow paper-exchange --port 7497 --start 2026-03-02T09:25:00-05:00",
    "validate-connection": "tradeflow validate-connection --order-test",
    "reconcile": "tradeflow reconcile --export reports/today",
    "resolve": 'tradeflow resolve AAPL --note "bought 10 by hand in TWS"',
    "models": "tradeflow models list",
    "deploy": "tradeflow deploy --check",
    "halt": 'tradeflow halt --reason "broker outage, checking positions"',
    "resume": 'tradeflow resume --reason "positions checked, reconciled"',
    "flatten": 'tradeflow flatten --reason "closing everything after the outage" --yes',
    "up": "tradeflow up --replay-sessions 1",
    "replay": "tradeflow replay --from 2026-03-05 --to 2026-03-06 --mtf-every 6",
    "paper-clock": "tradeflow paper-clock --set 2026-03-09T15:55:00-04:00",
    "status": "tradeflow status --as-of 2026-03-06T17:30:00-05:00",
    "config": "tradeflow config | grep IBKR",
    "completion": "source <(tradeflow completion)",
    "plot": "tradeflow plot ema --out ema.png",
    "alerts": "TRADEFLOW_ALERT_URL=json://127.0.0.1:8765/ tradeflow alerts test",
    "strategies": "tradeflow strategies",
    "new-strategy": "tradeflow new-strategy breakout",
}
"""One example per command, shown at the end of its --help."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"tradeflow {version('tradeflow')}"
    except PackageNotFoundError:  # pragma: no cover - run from a checkout that was never installed
        return "tradeflow (not installed)"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tradeflow",
        description="Scheduled trading workflows for Interactive Brokers, orchestrated by Prefect. "
        "`tradeflow up` starts everything; `tradeflow status` says where things stand; `tradeflow COMMAND --help` "
        "explains each command with an example.",
        epilog="example:\n  tradeflow up            # Prefect server + UI, paper exchange, deployments, worker\n"
        "  tradeflow status        # one screen: halt, breaks, positions, stop, EMA, models, next runs",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from deployments import commands

    for register in commands.REGISTRY:
        register(sub)
    for name, p in sub.choices.items():
        if name in EXAMPLES and not p.epilog:
            p.epilog = f"example:\n  {EXAMPLES[name]}"
            if p.formatter_class is argparse.HelpFormatter:
                p.formatter_class = argparse.RawDescriptionHelpFormatter
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
