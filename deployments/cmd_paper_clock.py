"""`tradeflow paper-clock`: read or move the paper exchange's clock (its admin port, TRADEFLOW_PAPER_ADMIN_PORT).

With the paper exchange, a run acts at the exchange's clock: an ad hoc run whose `as_of` is more than
TRADEFLOW_LATE_RUN_MAX_MINUTES before the clock is skipped as late, and one after it would decide on prices
older than its `as_of`. Move the clock to the `as_of` first:

    tradeflow paper-clock --set 2026-03-06T15:55:00-05:00
    prefect deployment run 'ema-entry/ema-entry' -p as_of=2026-03-06T15:55:00-05:00

The clock only moves forward; orders due by the new time fill before the command returns.

The gateway's life, to try what the flows do around it: `--restart SECONDS` (every connection dropped, the port
closed for that much exchange time, as IB Gateway's daily restart), `--logout` (down until `--login`).
The admin port's token is read from the token file beside the state file (or TRADEFLOW_PAPER_ADMIN_TOKEN).
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
    group.add_argument("--restart", type=float, metavar="SECONDS",
                       help="restart the gateway: drop every connection, close the port for SECONDS")
    group.add_argument("--logout", action="store_true", help="take the gateway down until --login")
    group.add_argument("--login", action="store_true", help="bring a logged-out gateway back")
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
        elif args.restart is not None or args.logout or args.login:
            if args.restart is not None:
                admin.restart(args.restart)
            else:
                admin.logout() if args.logout else admin.login()
            status = admin.status()
            g = status["gateway"]
            print(f"paper exchange gateway: {'up' if g['up'] else 'down: ' + g['reason']}")
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
