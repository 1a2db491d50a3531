"""`tradeflow paper-clock`: read or move the paper exchange's clock (its admin port, TRADEFLOW_PAPER_ADMIN_PORT).

With the paper exchange, a run acts at the exchange's clock: an ad hoc run whose `as_of` is more than
TRADEFLOW_LATE_RUN_MAX_MINUTES before the clock is skipped as late, and one after it would decide on prices
older than its `as_of`. Move the clock to the `as_of` first:

    tradeflow paper-clock --set 2026-03-06T15:55:00-05:00
    prefect deployment run 'ema-entry/ema-entry' -p as_of=2026-03-06T15:55:00-05:00

The clock only moves forward; orders due by the new time fill before the command returns.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime


def register_paper_clock(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("paper-clock", help="read or move the paper exchange's clock", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--set", dest="to", metavar="ISO", help="move the clock to this time (with its UTC offset)")
    group.add_argument("--step", type=float, metavar="SECONDS", help="move the clock forward by this much")
    p.set_defaults(handler=_paper_clock)


def _paper_clock(args: argparse.Namespace) -> int:
    from core.paper_exchange import AdminClient, AdminError
    from core.settings import get_settings

    admin = AdminClient(get_settings().paper_admin_port)
    try:
        if args.to:
            to = datetime.fromisoformat(args.to)
            if to.tzinfo is None:
                print("tradeflow paper-clock: --set needs a UTC offset, e.g. 2026-03-06T15:55:00-05:00",
                      file=sys.stderr)
                return 2
            status = admin.set_clock(to)
        elif args.step is not None:
            status = admin.step(args.step)
        else:
            status = admin.status()
    except ValueError as exc:
        print(f"tradeflow paper-clock: {exc}", file=sys.stderr)
        return 2
    except (OSError, AdminError) as exc:
        print(f"tradeflow paper-clock: {exc} (is the paper exchange running? its admin port is "
              f"{admin.port})", file=sys.stderr)
        return 1
    print(f"paper exchange clock: {status['clock']}")
    return 0
