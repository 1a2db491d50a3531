"""Performance figures of a backtest (strategies.md, "Report").

All returned figures are fractions (0.25 = 25 %) except the counts and ratios named otherwise.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

__all__ = ["SESSIONS_PER_YEAR", "PerformanceMetrics", "Tearsheet", "max_drawdown", "performance_metrics", "tearsheet"]

SESSIONS_PER_YEAR = 252
"""Sessions a year used to annualise (Sharpe, CAGR, round trips a year)."""


@dataclass(frozen=True, slots=True)
class PerformanceMetrics:
    """The report of strategies.md.

    Attributes:
        start_equity, end_equity: USD, before the first session and at the last close.
        total_return: end / start - 1 (fraction).
        years: sessions / 252.
        cagr: compound annual growth rate, (end / start) ** (1 / years) - 1 (fraction).
        max_drawdown: the largest fall of close-to-close equity from its running peak (fraction, >= 0); the
            starting capital is the first peak; intraday lows are not marked.
        sharpe: mean / standard deviation (ddof 1) of daily returns * sqrt(252), risk-free 0 (NaN if flat).
        round_trips: closed round trips (an entry and its exit); a position still open at the end is not counted.
        round_trips_per_year: round_trips / years.
        win_rate: share of closed round trips with P&L > 0 after commissions (NaN with none).
        exposure: share of sessions with a position at some time during the session (see `core.backtest.ema`).
        sessions: sessions in the window.
    """

    start_equity: float
    end_equity: float
    total_return: float
    years: float
    cagr: float
    max_drawdown: float
    sharpe: float
    round_trips: int
    round_trips_per_year: float
    win_rate: float
    exposure: float
    sessions: int

    def as_dict(self) -> dict[str, float | int]:
        """The figures as a plain dict."""
        return asdict(self)


def max_drawdown(equity: np.ndarray | pd.Series, start_equity: float | None = None) -> float:
    """Largest peak-to-trough fall of `equity` as a fraction of the peak (0.2 = 20 %).

    Args:
        equity: equity values in time order, USD (> 0).
        start_equity: a value before the first one (the starting capital) that counts as a peak, USD.
    """
    values = np.asarray(equity, dtype=float)
    if start_equity is not None:
        values = np.concatenate([[float(start_equity)], values])
    if values.size == 0:
        return 0.0
    peaks = np.maximum.accumulate(values)
    return float(np.max(1.0 - values / peaks))


def performance_metrics(
    equity: pd.Series,
    start_equity: float,
    trade_pnl: np.ndarray | pd.Series,
    exposed: np.ndarray | pd.Series,
) -> PerformanceMetrics:
    """The figures of strategies.md's report from an equity curve and the round trips.

    Args:
        equity: equity at each session's close, USD, indexed by session (one row per session of the window).
        start_equity: equity before the first session, USD (> 0).
        trade_pnl: P&L of each closed round trip, USD, after commissions.
        exposed: booleans, one per session, True when a position was held at some time during the session.

    Raises:
        ValueError: `equity` is empty, or `start_equity` is not > 0.
    """
    if len(equity) == 0:
        raise ValueError("equity must have at least one session")
    if not (math.isfinite(start_equity) and start_equity > 0):
        raise ValueError(f"start_equity must be > 0, got {start_equity!r}")
    values = equity.to_numpy(dtype=float)
    n = values.size
    prev = np.concatenate([[start_equity], values[:-1]])
    rets = values / prev - 1.0
    years = n / SESSIONS_PER_YEAR
    end = float(values[-1])
    growth = end / start_equity
    cagr = growth ** (1.0 / years) - 1.0 if growth > 0 else -1.0
    sd = float(np.std(rets, ddof=1)) if n > 1 else float("nan")
    sharpe = float(np.mean(rets) / sd * math.sqrt(SESSIONS_PER_YEAR)) if sd and math.isfinite(sd) else float("nan")
    pnl = np.asarray(trade_pnl, dtype=float)
    k = int(pnl.size)
    return PerformanceMetrics(
        start_equity=float(start_equity),
        end_equity=end,
        total_return=growth - 1.0,
        years=years,
        cagr=cagr,
        max_drawdown=max_drawdown(values, start_equity),
        sharpe=sharpe,
        round_trips=k,
        round_trips_per_year=k / years,
        win_rate=float(np.mean(pnl > 0)) if k else float("nan"),
        exposure=float(np.mean(np.asarray(exposed, dtype=bool))),
        sessions=n,
    )


@dataclass(frozen=True)
class Tearsheet:
    """Risk figures of a daily return series, computed by empyrical-reloaded (`empyrical`), not by this project.

    Attributes:
        sortino: annualised Sortino ratio (required return 0, 252 periods a year).
        calmar: annualised return / |maximum drawdown| (empyrical's definition).
        annual_volatility: standard deviation of daily returns * sqrt(252) (fraction).
        annual_return: empyrical's annualised (geometric) return (fraction).
        max_drawdown: empyrical's maximum drawdown (fraction, > 0 here: empyrical's sign flipped).
        monthly_returns: compounded return of each calendar month (fraction), indexed by (year, month).
    """

    sortino: float
    calmar: float
    annual_volatility: float
    annual_return: float
    max_drawdown: float
    monthly_returns: pd.Series

    def as_dict(self) -> dict[str, object]:
        """JSON-able: the figures and the monthly returns as {"YYYY-MM": fraction}."""
        return {"sortino": self.sortino, "calmar": self.calmar, "annual_volatility": self.annual_volatility,
                "annual_return": self.annual_return, "max_drawdown": self.max_drawdown,
                "monthly_returns": {f"{y:04d}-{m:02d}": float(v) for (y, m), v in self.monthly_returns.items()}}

    def monthly_table(self) -> pd.DataFrame:
        """Monthly returns as a year x month table (fractions; NaN where the window has no session)."""
        t = self.monthly_returns.unstack()
        t.index.name, t.columns.name = "year", "month"
        return t


def tearsheet(daily_returns: pd.Series) -> Tearsheet:
    """Sortino, Calmar, annual volatility and monthly returns of ``daily_returns`` (empyrical-reloaded).

    Args:
        daily_returns: simple returns per session (fraction), indexed by session date (DatetimeIndex).

    Raises:
        ValueError: an empty series, or an index that is not a DatetimeIndex.
    """
    import empyrical as ep

    if len(daily_returns) == 0:
        raise ValueError("daily_returns must have at least one session")
    if not isinstance(daily_returns.index, pd.DatetimeIndex):
        raise ValueError("daily_returns must be indexed by session date (DatetimeIndex)")
    r = daily_returns.astype(float)
    monthly = ep.aggregate_returns(r, "monthly")
    return Tearsheet(
        sortino=float(ep.sortino_ratio(r, period="daily")),
        calmar=float(ep.calmar_ratio(r, period="daily")),
        annual_volatility=float(ep.annual_volatility(r, period="daily")),
        annual_return=float(ep.annual_return(r, period="daily")),
        max_drawdown=float(-ep.max_drawdown(r)),
        monthly_returns=monthly,
    )
