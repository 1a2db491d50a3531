"""`tradeflow reconcile [--export NAME]` and `tradeflow resolve SYMBOL --note "..."`.

`reconcile` is the evening reconciliation run by hand against the configured broker (IBKR_HOST/IBKR_PORT): the
same repairs and breaks are recorded (executions the journal lacks, external orders, order states), the report
is printed, and the day's P&L is shown but left for the evening `reconciliation` run to record (a figure taken
at noon must not become the day's). Exit code 1 when positions disagree or a break is unresolved.

`resolve` settles a symbol's position break: it records the same repairs, then marks the break resolved by the
login name with the note, and records as an adjustment the difference left between the broker's and the
journal's quantity, so the journal agrees with the broker from then on and orders for the symbol flow again.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys


def register_reconcile(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reconcile",
        help="compare the broker's positions, orders and executions with the journal; repair; report",
        description="Reads the broker's positions, open and completed orders and today's executions (IB keeps "
        "them until midnight), records what the journal lacks (fills linked to their orders, external orders, "
        "final order states), records position breaks (they block orders for the symbol until `tradeflow "
        "resolve`) and prints a report with today's trades and P&L per strategy. Exit code 1 when a break is "
        "found or still unresolved.",
    )
    p.add_argument("--export", metavar="NAME",
                   help="also write NAME_positions.csv, NAME_orders.csv and NAME_executions.csv (header and one "
                        "row per position, order, execution of the day)")
    p.set_defaults(handler=_reconcile)


def register_resolve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "resolve",
        help="settle a position break so that orders for the symbol are allowed again",
        description="Records today's missing fills first (like `tradeflow reconcile`), then marks the symbol's "
        "unresolved breaks settled, by your login name, with the note; whatever difference remains between the "
        "broker's and the journal's quantity is recorded as an adjustment, so the journal agrees with the broker "
        "from now on. It needs the broker (IBKR_HOST/IBKR_PORT) to read the positions. Exit code 1 when the "
        "symbol has no unresolved break or the broker cannot be reached.",
    )
    p.add_argument("symbol", help="e.g. AAPL")
    p.add_argument("--note", required=True, help='how the break was settled, e.g. "bought by hand in TWS"')
    p.set_defaults(handler=_resolve)


def _broker():
    from core.ib_broker import IBBroker
    from core.settings import get_settings
    from tasks.runtime import client_id_offset

    settings = get_settings()
    return IBBroker(client_id=settings.ibkr_client_id + client_id_offset("operator"), settings=settings)


def _reconcile(args: argparse.Namespace) -> int:
    from core.broker import BrokerError
    from core.journal import Journal
    from core.reconcile_report import format_text
    from core.settings import get_settings
    from tasks.reconcile import reconcile_account, write_exports

    journal = Journal(get_settings().journal_path)
    try:
        with _broker() as broker:
            result = reconcile_account(broker, journal, broker.current_time(), run_id=None, record_day_pnl=False)
    except BrokerError as exc:
        print(f"tradeflow reconcile: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(format_text(result))
    if args.export:
        for path in write_exports(result, args.export):
            print(f"wrote {path}")
    return 1 if result.failure else 0


def _resolve(args: argparse.Namespace) -> int:
    from core.broker import BrokerError
    from core.calendar import NY
    from core.controls import operator
    from core.journal import Journal
    from core.settings import get_settings
    from tasks.reconcile import resolve_break

    if not args.note.strip():
        print("tradeflow resolve: --note must say how the break was settled", file=sys.stderr)
        return 2
    journal = Journal(get_settings().journal_path)
    try:
        with _broker() as broker:
            done = resolve_break(broker, journal, args.symbol, operator(), args.note, dt.datetime.now(NY))
    except BrokerError as exc:
        print(f"tradeflow resolve: {exc}", file=sys.stderr)
        return 1
    if done is None:
        print(f"tradeflow resolve: {args.symbol.upper()} has no unresolved position break", file=sys.stderr)
        return 1
    print(f"{done.symbol}: {done.breaks} break(s) resolved by {operator()}; broker {done.broker_quantity:g} shares, "
          f"journal {done.journal_quantity:g}" + (f", adjustment {done.adjustment:+g} shares recorded"
                                                 if done.adjustment else ", no adjustment needed")
          + f". Orders for {done.symbol} are allowed again.")
    return 0
