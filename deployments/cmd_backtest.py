"""`tradeflow backtest ema`: the EMA 25/125 SMH backtest on the daily bars of the data directory.

Reads `<data_dir>/daily/SMH.csv` and `<data_dir>/daily/VIX.csv` (setting TRADEFLOW_DATA_DIR, or `--data-dir`),
runs `core.backtest.ema.run_ema_backtest` with the settings' strategy, commission, capital, slippage and margin
interest, prints the figures after costs beside the source system's, the tearsheet figures and monthly returns,
and the slippage sensitivity table (0, 2, 5, 10 bp), and writes trades.csv, equity.csv, equity_drawdown.png,
metrics.json, monthly_returns.csv and sensitivity.csv to `--out` (default `<state_dir>/backtests/ema_<from>_<to>`).

Exit codes: 0 done; 2 bad arguments, settings or data (the message names the file or argument).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["register_backtest"]


def register_backtest(sub: argparse._SubParsersAction) -> None:
    """Add `backtest` (positional strategy: `ema`) to the `tradeflow` subcommands."""
    p = sub.add_parser(
        "backtest",
        help="backtest a strategy on the daily bars of the data directory",
        description="Backtest a strategy on daily bars (rules: shared/reference/strategies.md).",
    )
    p.add_argument("strategy", choices=["ema"], help="ema: EMA 25/125 on SMH with VIX leverage and daily stop")
    p.add_argument(
        "--from",
        dest="start",
        metavar="YYYY-MM-DD",
        help="first session (default: the first with ema_min_history sessions before it)",
    )
    p.add_argument("--to", dest="end", metavar="YYYY-MM-DD", help="last session (default: the last in the data)")
    p.add_argument("--out", type=Path, metavar="DIR", help="output folder (default: <state_dir>/backtests/...)")
    p.add_argument("--data-dir", type=Path, metavar="DIR", help="bars folder (default: setting data_dir)")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from core.bars import BarsError, load_daily_bars
    from core.backtest.ema import EmaBacktestConfig, default_window, run_ema_backtest, slippage_sensitivity
    from core.backtest.report import format_metrics, format_sensitivity, write_backtest_files
    from core.settings import load_settings

    settings = load_settings()
    data_dir = args.data_dir or settings.data_dir
    symbol = settings.ema_symbol
    try:
        smh = load_daily_bars(data_dir, symbol)
        vix = load_daily_bars(data_dir, "VIX")
    except BarsError as exc:
        print(f"tradeflow backtest: {exc}", file=sys.stderr)
        return 2
    config = EmaBacktestConfig.from_settings(settings)
    t0 = time.perf_counter()
    try:
        if args.start is None or args.end is None:
            first, last = default_window(smh, config.params.min_history)
        start = args.start if args.start is not None else first
        end = args.end if args.end is not None else last
        result = run_ema_backtest(smh, vix, start, end, config)
        sensitivity = slippage_sensitivity(smh, vix, start, end, config)
    except ValueError as exc:
        print(f"tradeflow backtest: {exc}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - t0
    first_day = result.equity.index[0].date()
    last_day = result.equity.index[-1].date()
    out = args.out or settings.state_dir / "backtests" / f"ema_{first_day}_{last_day}"
    paths = write_backtest_files(result, out, sensitivity)
    print(format_metrics(result, title=f"EMA {config.params.fast}/{config.params.slow} {symbol} backtest"))
    print()
    print(format_sensitivity(sensitivity))
    print(f"simulation: {elapsed:.3f} s")
    print("wrote:")
    for path in paths.values():
        print(f"  {path}")
    return 0
