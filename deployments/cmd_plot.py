"""`tradeflow plot ema|mtf|equity|retrain`: the charts of the flows' artifacts (core/charts.py), from the journal, as PNG
files."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path


def register_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="draw a chart from the journal as a PNG: ema, mtf or equity",
                       description="ema: SMH's daily closes with EMA 25/125 over the last months, the strategy's "
                       "entries, exits and stop levels (as in ema-update's artifact). mtf: one session's P(up) per "
                       "symbol against the entry and exit thresholds, with entries and exits. equity: the account's "
                       "equity and drawdown and each strategy's net P&L (as in reconciliation's). retrain: the last "
                       "retrain's challenger against the champion it was judged against, ROC and calibration on "
                       "its evaluation month, evaluated again on the bar store (as in retrain's artifact).")
    p.add_argument("chart", choices=("ema", "mtf", "equity", "retrain"), help="which chart")
    p.add_argument("--symbol", default="AAPL", help="retrain: the MTF symbol (default AAPL)")
    p.add_argument("--session", metavar="YYYY-MM-DD",
                   help="mtf: the session (default: the latest with MTF decisions); equity: the last session shown")
    p.add_argument("--months", type=int, default=6, help="ema: months of history shown (default 6)")
    p.add_argument("--out", metavar="PATH", help="the PNG file (default: <state dir>/reports/<chart>-<date>.png)")
    p.set_defaults(handler=_plot)


def _plot(args: argparse.Namespace) -> int:
    from core import charts
    from core import journal as jr
    from core.settings import get_settings

    settings = get_settings()
    journal = jr.Journal(settings.journal_path)
    journal.ensure()
    try:
        day = dt.date.fromisoformat(args.session) if args.session else None
    except ValueError:
        print(f"tradeflow plot: --session {args.session!r} is not a date (YYYY-MM-DD)", file=sys.stderr)
        return 2
    try:
        if args.chart == "ema":
            png, label = charts.ema_chart(journal, settings, args.months), "latest"
        elif args.chart == "mtf":
            if day is None:
                last = jr.status_latest_signals(journal)
                last = last[last["strategy"] == "mtf"]
                if last.empty:
                    raise ValueError("no MTF decision in the journal yet")
                day = last["as_of"].max().date()
            png, label = charts.mtf_chart(journal, settings, day), str(day)
        elif args.chart == "retrain":
            png, label = _retrain_chart(settings, args.symbol.upper()), args.symbol.upper()
        else:
            png, label = charts.equity_chart(journal, day), str(day or "latest")
    except ValueError as exc:
        print(f"tradeflow plot {args.chart}: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out) if args.out else settings.state_dir / "reports" / f"{args.chart}-{label}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(png)
    print(out)
    return 0


def _retrain_chart(settings, symbol: str) -> bytes:
    from core.bar_store import BarStore, store_root
    from core.charts import retrain_chart_png
    from models.evaluate import RuleParams
    from core.journal import Journal
    from models.registry import ModelRegistry
    from models.retrain import latest_retrain_curves

    bars = BarStore(store_root(settings.state_dir)).load(symbol)
    window, challenger, champion = latest_retrain_curves(ModelRegistry(settings.models_dir, Journal(settings.journal_path)), symbol, bars,
                                                         settings.mtf_horizon, RuleParams.from_settings(settings))
    return retrain_chart_png(symbol, window, challenger, champion)
