"""The subcommands of `tradeflow`, one `register_*` function each.

A register function adds its subparser and sets `handler` (a function of the parsed arguments returning the
exit code). Heavy imports (Prefect, TensorFlow, ib_insync) happen inside handlers, so `tradeflow --help` and
the quick commands stay fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

REGISTRY: list[Callable[[argparse._SubParsersAction], None]] = []


def register_schedule(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "schedule",
        help="print the deployments' event times on the NYSE calendar",
        description="One event per line, sorted by time: the deployment name, a space, the ISO time with its "
        "America/New_York offset. Holidays have no events; early closes move the close-relative ones.",
    )
    p.add_argument("--from", dest="start", required=True, metavar="YYYY-MM-DD", help="first date (inclusive)")
    p.add_argument("--to", dest="end", required=True, metavar="YYYY-MM-DD", help="last date (inclusive)")
    p.add_argument("--deployment", metavar="NAME", help="only this deployment's events")
    p.set_defaults(handler=_schedule)


def _schedule(args: argparse.Namespace) -> int:
    from core.calendar import event_times
    from core.settings import get_settings

    try:
        events = event_times(
            args.start,
            args.end,
            deployment=args.deployment,
            entry_minutes_before_close=get_settings().ema_entry_minutes_before_close,
        )
    except ValueError as exc:
        print(f"tradeflow schedule: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write("".join(f"{event}\n" for event in events))
    return 0


def register_strategies(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "strategies",
        help="list the registry: strategies, their deployments, events, client ids, tags, whether they run",
        description="Every strategy the registry knows (built in, the project's strategies/ packages, installed "
        "packages' `tradeflow.strategies` entry points) and each deployment's events relative to the session, "
        "entrypoint, IB client id (IBKR_CLIENT_ID + offset), tags, and whether it runs (TRADEFLOW_STRATEGIES).",
    )
    p.set_defaults(handler=_strategies)


def _strategies(args: argparse.Namespace) -> int:
    from core.registry import default_registry
    from core.settings import get_settings

    settings = get_settings()
    registry = default_registry()
    try:
        enabled = set(registry.enabled(settings.strategies))
    except ValueError as exc:
        print(f"tradeflow strategies: TRADEFLOW_STRATEGIES: {exc}", file=sys.stderr)
        return 2
    for s in registry.strategies:
        print(f"{s.name} ({'runs' if s.name in enabled else 'off'}; {s.source}): {s.description}")
        for d in s.deployments:
            when = ", ".join(rule.describe() for rule in d.events)
            print(f"  {d.name:<18} {when:<34} client id {settings.ibkr_client_id + d.client_id_offset:<4} "
                  f"{'orders ' if d.sends_orders else ''}{d.entrypoint}  tags {','.join(d.all_tags)}")
    return 0


def register_sql(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sql",
        help="query the journal with SQL (read-only; never blocks a flow)",
        description="Runs one read-only query on the journal's read snapshot, brought up to date first: it sees "
        "every write completed before it started. Times show in America/New_York. Only the journal can be "
        "read (no ATTACH, COPY, INSTALL/LOAD, files, or SET). For an interactive session use the DuckDB CLI "
        "on the path that --path prints, with -readonly: it sees the journal as it was when it opened.",
    )
    p.add_argument("query", nargs="?", help='e.g. "SELECT * FROM v_daily_pnl"')
    p.add_argument("--path", action="store_true", help="bring the read snapshot up to date, print its path, exit")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
    p.set_defaults(handler=_sql)


def _sql(args: argparse.Namespace) -> int:
    import duckdb

    from core.journal import Journal, JournalError
    from core.settings import get_settings

    journal = Journal(get_settings().journal_path)
    if not args.path and not args.query:
        print("tradeflow sql: give a query, or --path", file=sys.stderr)
        return 2
    try:
        if args.path:
            journal.sync()
            print(journal.snapshot_path)
            return 0
        with journal.reader(people=True) as con:
            cur = con.execute(args.query)
            columns = [d[0] for d in cur.description] if cur.description else []
            rows = cur.fetchall() if columns else []
    except JournalError as exc:
        print(f"tradeflow sql: {exc}", file=sys.stderr)
        return 1
    except duckdb.Error as exc:
        refused = isinstance(exc, duckdb.PermissionException) or any(
            s in str(exc) for s in ("read-only", "configuration has been locked", "disabled by configuration"))
        why = "refused: the journal is read-only here, and nothing outside it can be read or changed; " \
            if refused else ""
        print(f"tradeflow sql: {why}{exc}", file=sys.stderr)
        return 1
    _print_rows(columns, rows, args.format)
    return 0


def _print_rows(columns: list[str], rows: list[tuple], fmt: str) -> None:
    """A query's result on stdout: CSV, JSON records (times ISO 8601), or an aligned table."""
    import csv
    import json

    if fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
    elif fmt == "json":
        sys.stdout.write(json.dumps([dict(zip(columns, r, strict=True)) for r in rows], default=_iso) + "\n")
    elif not rows:
        print(f"(no rows) columns: {', '.join(columns)}")
    else:
        shown = [[("NULL" if v is None else _iso(v) if hasattr(v, "isoformat") else str(v)) for v in r]
                 for r in rows[:500]]
        widths = [max(len(c), *(len(r[i]) for r in shown)) for i, c in enumerate(columns)]
        print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
        for r in shown:
            print("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)))
        if len(rows) > 500:
            print(f"({len(rows)} rows, the first 500 shown; --format csv gives all)")


def _iso(value: object) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


from deployments.cmd_backtest import register_backtest  # noqa: E402  (each module registers one command)
from deployments.cmd_broker import register_paper_exchange, register_validate_connection  # noqa: E402
from deployments.cmd_models import register_models  # noqa: E402
from deployments.cmd_train import register_train  # noqa: E402
from deployments.cmd_reconcile import register_reconcile, register_resolve  # noqa: E402
from deployments.cmd_controls import register_controls  # noqa: E402
from deployments.cmd_deploy import register_deploy  # noqa: E402
from deployments.cmd_paper_clock import register_paper_clock  # noqa: E402
from deployments.cmd_up import register_up  # noqa: E402
from deployments.cmd_replay import register_replay  # noqa: E402
from deployments.cmd_alerts import register_alerts  # noqa: E402
from deployments.cmd_status import register_status  # noqa: E402
from deployments.cmd_config import register_config  # noqa: E402
from deployments.cmd_plot import register_plot  # noqa: E402
from deployments.cmd_evaluate import register_evaluate  # noqa: E402

from deployments.cmd_new_strategy import register_new_strategy  # noqa: E402

REGISTRY += [
    register_schedule,
    register_strategies,
    register_new_strategy,
    register_sql,
    register_backtest,
    register_train,
    register_evaluate,
    register_paper_exchange,
    register_validate_connection,
    register_reconcile,
    register_resolve,
    register_models,
    register_deploy,
    register_controls,
    register_up,
    register_replay,
    register_alerts,
    register_paper_clock,
    register_status,
    register_config,
    register_plot,
]
