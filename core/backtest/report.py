"""Write a backtest's files and format its figures.

Files (in the output folder):
- `trades.csv`: one row per round trip (columns of `EmaBacktestResult.trades`);
- `equity.csv`: one row per session (columns of `EmaBacktestResult.equity`, `session` first);
- `equity_drawdown.png`: the equity curve (log scale, USD) above the drawdown (percent);
- `metrics.json`: the figures, the tearsheet figures (empyrical-reloaded), the costs, the window and the source
  system's figures;
- `monthly_returns.csv`: the strategy's return per calendar month (year x month, fractions);
- `sensitivity.csv`: the figures at 0, 2, 5 and 10 bp of slippage per fill (when given).

The chart uses matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from core.backtest.ema import SOURCE_SYSTEM_FIGURES, EmaBacktestResult
from core.backtest.metrics import tearsheet

__all__ = ["CHART_PNG", "EQUITY_CSV", "METRICS_JSON", "MONTHLY_CSV", "SENSITIVITY_CSV", "TRADES_CSV",
           "format_metrics", "format_sensitivity", "write_backtest_files"]

TRADES_CSV = "trades.csv"
EQUITY_CSV = "equity.csv"
CHART_PNG = "equity_drawdown.png"
METRICS_JSON = "metrics.json"
MONTHLY_CSV = "monthly_returns.csv"
SENSITIVITY_CSV = "sensitivity.csv"


def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f} %"


def _num(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def format_metrics(result: EmaBacktestResult, title: str = "EMA 25/125 SMH backtest") -> str:
    """A text table of the figures (after every cost) beside the source system's (strategies.md), the costs, the
    tearsheet figures (empyrical-reloaded), the monthly returns, counts and the window."""
    m = result.metrics
    ts = tearsheet(result.equity["daily_return"])
    eq = result.equity
    tr = result.trades
    src = SOURCE_SYSTEM_FIGURES
    first, last = eq.index[0].date(), eq.index[-1].date()
    lines = [
        (
            f"{title}: {first} .. {last} ({m.sessions} sessions, {m.years:.2f} years at 252/yr; "
            f"EMA warm-up {result.warmup_sessions} sessions)"
        ),
        f"start {m.start_equity:,.2f} USD -> end {m.end_equity:,.2f} USD (total return {_pct(m.total_return)})",
        "",
        f"{'figure':<22}{'this backtest':>16}{'source system':>16}",
        f"{'CAGR':<22}{_pct(m.cagr):>16}{_pct(src['cagr']):>16}",
        f"{'max drawdown':<22}{_pct(m.max_drawdown):>16}{_pct(src['max_drawdown']):>16}",
        f"{'Sharpe (252, rf 0)':<22}{_num(m.sharpe):>16}{_num(src['sharpe']):>16}",
        f"{'round trips / year':<22}{_num(m.round_trips_per_year, 1):>16}{_num(src['round_trips_per_year'], 1):>16}",
        f"{'win rate':<22}{_pct(m.win_rate):>16}{_pct(src['win_rate']):>16}",
        f"{'exposure':<22}{_pct(m.exposure):>16}{'n/a':>16}",
        f"{'Sortino':<22}{_num(ts.sortino):>16}{'n/a':>16}",
        f"{'Calmar':<22}{_num(ts.calmar):>16}{'n/a':>16}",
        f"{'annual volatility':<22}{_pct(ts.annual_volatility):>16}{'n/a':>16}",
        "",
    ]
    cfg = result.config
    interest = float(eq["interest"].sum()) if "interest" in eq else 0.0
    margin = cfg.margin
    lines.append(
        f"costs: slippage {1e4 * cfg.slippage_fraction:g} bp per fill (stops at the worse of stop and open, then "
        f"slipped); IB fixed commission; margin interest "
        + (f"at benchmark {_pct(margin.benchmark_rate)} + IB's tiered spread (360-day year): {interest:,.2f} USD"
           if margin is not None else "not charged")
    )
    lines.append("")
    lines.append("monthly returns (%):")
    table = ts.monthly_table()
    lines.append("year " + "".join(f"{mo:>7d}" for mo in table.columns))
    for year, row in table.iterrows():
        lines.append(f"{year:<5d}" + "".join("      -" if pd.isna(v) else f"{100 * v:7.1f}" for v in row))
    lines.append("")
    reasons = tr["exit_reason"].value_counts().to_dict() if len(tr) else {}
    exits = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()) if k != "open")
    still_open = "yes" if reasons.get("open") else "no"
    lines.append(f"round trips closed: {m.round_trips} (exits: {exits}); open at the end: {still_open}")
    lines.append(f"commissions: {tr['commission'].sum():,.2f} USD" if len(tr) else "commissions: 0.00 USD")
    lines.append(
        "The source system's exact backtest rules are unknown; these figures follow strategies.md and are not "
        "tuned to match."
    )
    return "\n".join(lines)


def format_sensitivity(table: pd.DataFrame) -> str:
    """The slippage sensitivity table (`core.backtest.ema.slippage_sensitivity`) as text."""
    lines = [
        "slippage sensitivity (every other cost as above):",
        f"{'bp/fill':>8}{'CAGR':>12}{'max DD':>12}{'Sharpe':>9}{'trips/yr':>10}{'win rate':>10}{'end equity USD':>18}"
        f"{'interest USD':>15}",
    ]
    for bp, r in table.iterrows():
        lines.append(
            f"{bp:>8g}{_pct(r['cagr']):>12}{_pct(r['max_drawdown']):>12}{_num(r['sharpe']):>9}"
            f"{_num(r['round_trips_per_year'], 1):>10}{_pct(r['win_rate']):>10}{r['end_equity']:>18,.0f}"
            f"{r['interest']:>15,.0f}"
        )
    return "\n".join(lines)


def write_backtest_files(
    result: EmaBacktestResult, out_dir: Path | str, sensitivity: pd.DataFrame | None = None
) -> dict[str, Path]:
    """Write the trades CSV, equity CSV, PNG chart, metrics JSON, monthly returns CSV and (when given) the
    slippage sensitivity CSV into `out_dir` (created if missing).

    Returns:
        The paths written, keyed `trades`, `equity`, `chart`, `metrics`, `monthly`, and `sensitivity` when given.

    Raises:
        OSError: the folder cannot be created or written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "trades": out / TRADES_CSV,
        "equity": out / EQUITY_CSV,
        "chart": out / CHART_PNG,
        "metrics": out / METRICS_JSON,
        "monthly": out / MONTHLY_CSV,
    }
    if sensitivity is not None:
        paths["sensitivity"] = out / SENSITIVITY_CSV
        sensitivity.to_csv(paths["sensitivity"], float_format="%.6f")
    ts = tearsheet(result.equity["daily_return"])
    ts.monthly_table().to_csv(paths["monthly"], float_format="%.6f")
    result.trades.to_csv(paths["trades"], index=False, float_format="%.6f")
    eq = result.equity.copy()
    eq.index = eq.index.strftime("%Y-%m-%d")
    eq.to_csv(paths["equity"], index_label="session", float_format="%.6f")
    _write_chart(result, paths["chart"])
    meta = {
        "first_session": str(result.equity.index[0].date()),
        "last_session": str(result.equity.index[-1].date()),
        "warmup_sessions": result.warmup_sessions,
        "metrics": {
            k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.metrics.as_dict().items()
        },
        "tearsheet": {k: v for k, v in ts.as_dict().items()},
        "costs": {
            "commission": float(result.trades["commission"].sum()) if len(result.trades) else 0.0,
            "interest": float(result.equity["interest"].sum()),
        },
        "sensitivity": None if sensitivity is None else {
            f"{bp:g}": {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for bp, row in sensitivity.to_dict("index").items()
        },
        "source_system": SOURCE_SYSTEM_FIGURES,
        "config": {
            "initial_capital": result.config.initial_capital,
            "slippage_fraction": result.config.slippage_fraction,
            "buying_power_multiple": result.config.buying_power_multiple,
            "margin": None if result.config.margin is None else {
                "benchmark_rate": result.config.margin.benchmark_rate,
                "tiers": [list(t) for t in result.config.margin.tiers],
                "day_count": result.config.margin.day_count,
            },
            "fast": result.config.params.fast,
            "slow": result.config.params.slow,
            "min_history": result.config.params.min_history,
            "stop_fraction": result.config.params.stop_fraction,
            "vix_table": [list(x) for x in result.config.params.vix_table],
            "default_leverage": result.config.params.default_leverage,
            "commission": {
                "per_share": result.config.commission.per_share,
                "minimum": result.config.commission.minimum,
                "max_fraction": result.config.commission.max_fraction,
            },
        },
    }
    paths["metrics"].write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return paths


def _write_chart(result: EmaBacktestResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    eq = result.equity
    m = result.metrics
    fig, (ax1, ax2) = plt.subplots(
        2, 1, figsize=(11, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]}, constrained_layout=True
    )
    ax1.plot(eq.index, eq["equity"], color="tab:blue", lw=1.2, label="strategy equity (close)")
    bh = eq["close"] / eq["close"].iloc[0] * m.start_equity
    ax1.plot(eq.index, bh, color="tab:gray", lw=0.9, alpha=0.8, label="SMH buy and hold (same start)")
    ax1.set_yscale("log")
    ax1.set_ylabel("equity, USD (log scale)")
    ax1.legend(loc="upper left")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.set_title(
        f"EMA 25/125 SMH, {eq.index[0].date()} .. {eq.index[-1].date()}: CAGR {_pct(m.cagr)}, "
        f"max DD {_pct(m.max_drawdown)}, Sharpe {_num(m.sharpe)}, {m.round_trips} round trips"
    )
    ax2.fill_between(eq.index, -100 * eq["drawdown"], 0, color="tab:red", alpha=0.5, lw=0)
    ax2.set_ylabel("drawdown, %")
    ax2.grid(True, alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
