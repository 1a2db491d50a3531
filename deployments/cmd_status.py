"""`tradeflow status`: where the system stands now, on one screen (the summary: core/status.py).

The journal, the halt file and the calendar are read here; the Prefect API (when one answers) says whether a
worker polls the work pool. `as_of` defaults to the broker's clock when the broker is the paper exchange (its
clock replays past sessions), else now.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys

EXAMPLE = """example:
  tradeflow status                      # now (the paper exchange's clock when it is the broker)
  tradeflow status --as-of 2026-03-06T17:30:00-05:00 --markdown
"""


def register_status(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="where the system stands now: halt, breaks, positions, stop, EMA, models, runs",
                       description="One screen: the kill switch, open position breaks, positions with their P&L, "
                       "today's day-start equity and EMA stop price, the EMA state and how far it is from a cross, "
                       "the VIX tier of the next entry, each MTF champion and its last P(up), today's session and "
                       "the next runs, whether a worker polls the work pool, and the last run of each deployment.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--as-of", metavar="ISO", help="the time to show the state at (with its UTC offset)")
    p.add_argument("--markdown", action="store_true", help="markdown (as the Prefect artifact shows it)")
    p.set_defaults(handler=_status)


def default_as_of(settings) -> dt.datetime:
    """The paper exchange's clock when it is the broker and answers, else the wall clock (New York)."""
    from core.calendar import NY
    from deployments.paper import paper_exchange_configured

    if paper_exchange_configured(settings):
        from core.paper_exchange import AdminClient

        try:
            return dt.datetime.fromisoformat(AdminClient(settings.paper_admin_port).status()["clock"]).astimezone(NY)
        except (OSError, KeyError, ValueError):
            pass
    return dt.datetime.now(NY)


def status_text(settings, as_of: dt.datetime | None = None, markdown: bool = False,
                api_url: str | None = None) -> str:
    """The rendered status (core/status.py) at `as_of` (default `default_as_of`)."""
    from core.journal import Journal
    from core.status import build_status, render

    if api_url is None:
        from prefect.settings import get_current_settings

        api_url = str(get_current_settings().api.url or "") or None
    from tasks.ui import worker_summary

    status = build_status(Journal(settings.journal_path), settings, as_of or default_as_of(settings),
                          worker=worker_summary(api_url))
    return render(status, markdown)


def _status(args: argparse.Namespace) -> int:
    from core.settings import get_settings

    as_of = None
    if args.as_of:
        try:
            as_of = dt.datetime.fromisoformat(args.as_of)
        except ValueError:
            print(f"tradeflow status: --as-of {args.as_of!r} is not an ISO 8601 date-time", file=sys.stderr)
            return 2
        if as_of.tzinfo is None:
            print("tradeflow status: --as-of needs a UTC offset, e.g. 2026-03-06T17:30:00-05:00", file=sys.stderr)
            return 2
    sys.stdout.write(status_text(get_settings(), as_of, args.markdown))
    return 0
