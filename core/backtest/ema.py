"""Backtest of the EMA 25/125 SMH strategy on daily bars (strategies.md, "Backtest on daily bars").

The simulation walks the sessions in order and calls the same pure functions as the live flows
(`core.strategies.ema`: :func:`stop_price`, :func:`stop_fill_price`, :func:`decide_before_close`,
:func:`close_update`; `core.costs`: the IB fixed commission). Only the data preparation is vectorised.

Rules (strategies.md) and the choices this module makes where they leave room, one session at a time:

1. **Open.** If the previous session's update found a final BEAR while long, the whole position is sold at this
   session's open ("a BEAR found at the update exits at the next open"); this is the only fill at the open.
2. **Day start.** E0 = equity at the session's open = cash + shares * open, after that exit (so E0 is the
   NetLiquidation a 09:30 snapshot would see with the position marked at the opening price); P_ref = open.
3. **Daily stop.** With q > 0 shares, P_stop = open - f * E0 / q (:func:`stop_price`, f = 0.02). It triggers when
   the session's low <= P_stop and fills at min(open, P_stop) (:func:`stop_fill_price`). Because P_ref is the
   open, P_stop < open always and the fill is at P_stop: an overnight gap is absorbed into E0, never stopped at
   the open. (A live broker stop resting overnight at the previous level would fill at a gap-down open; these
   rules do not model that.)
4. **15:55 decision** at the session's close price (or the optional `decision_price` column, which tests use to
   give the 15:55 price a value other than the close), with that session's VIX close standing in for VIX's
   15:55 value and the latest VIX close before the session as the fallback. It is an ordinary decision on every
   session: after a stop, or after a BEAR exit at the open, it enters again if the provisional signal is BULL.
   NetLiquidation = cash + shares * decision price. Fills are at the decision price.
5. **Update at the close**: the official close is folded into the EMAs (:func:`close_update`); a final BEAR while
   long schedules the exit at the next open (step 1). With decisions at the close the provisional and final
   EMAs are equal, so this exit only happens when `decision_price` differs from the close.
6. Equity is marked at the close: cash + shares * close.

Other choices:
- **Available funds**: the backtest models a margin account whose buying power is `buying_power_multiple`
  (default 4.0, IB's Reg T intraday buying power) times NetLiquidation, so the funds check never binds at the
  table's leverages (<= 3.75).
- **Margin interest** (`core.costs.MarginInterest`, IB's benchmark + tiered spread, 360-day year): charged on
  the debit cash balance left at each session's close for the calendar days until the next session (a Friday
  close pays 3 days, as IB accrues daily on the settled balance); intraday borrowing costs nothing; a credit
  balance earns nothing. The equity column `interest` holds each session's charge (USD).
- **Slippage**: each fill moves against the trade by `slippage_fraction` (default 5 bp, the setting
  `backtest_slippage_fraction`; `core.costs.slipped`): buys at price * (1 + s), sells at price * (1 - s). A
  daily stop fills as a stop-market order: at the worse of the stop price and the open, then slips.
- **Warm-up**: the EMAs are seeded with the first close of the data file and folded over every session before
  the window; at least `min_history` (250) sessions must precede the window's first session.
- **Exposure**: a session counts when a position is held at some time during it after any exit at the open:
  held into the session (also when the stop closes it later that day), or bought at the 15:55 decision.
- **Entry day**: a position bought at the 15:55 decision (the close) has no stop that session; its first stop
  is armed at the next open.
- **Account wiped out**: if NetLiquidation at a decision is <= 0, no decision is taken (the row says so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from core.backtest.metrics import PerformanceMetrics, performance_metrics
from core.costs import CommissionSchedule, MarginInterest
from core.strategies.ema import (
    Action,
    EmaParams,
    VixInfo,
    close_update,
    decide_before_close,
    init_ema_state,
    stop_fill_price,
    stop_price,
)

if TYPE_CHECKING:  # pragma: no cover
    from core.settings import Settings

__all__ = [
    "SOURCE_SYSTEM_FIGURES",
    "EmaBacktestConfig",
    "EmaBacktestResult",
    "default_window",
    "run_ema_backtest",
    "slippage_sensitivity",
]

SENSITIVITY_BPS: tuple[float, ...] = (0.0, 2.0, 5.0, 10.0)
"""Slippage levels of the sensitivity table, basis points per fill."""

SOURCE_SYSTEM_FIGURES: dict[str, float] = {
    "cagr": 0.9930,
    "max_drawdown": 0.2084,
    "sharpe": 1.64,
    "round_trips_per_year": 2.8,
    "win_rate": 0.40,
}
"""What the source system reported for July 2022 to January 2026 (strategies.md); exact rules unknown."""


@dataclass(frozen=True, slots=True)
class EmaBacktestConfig:
    """Backtest parameters.

    Attributes:
        params: the strategy parameters (spans, warm-up, stop fraction, VIX table).
        commission: the IB fixed commission schedule.
        initial_capital: USD at the start of the window.
        slippage_fraction: adverse slippage per fill, fraction of the price.
        buying_power_multiple: available funds = this * NetLiquidation at a decision (see the module doc).
        margin: the interest on borrowed cash (None: no interest, for a frictionless comparison).
    """

    params: EmaParams = field(default_factory=EmaParams)
    commission: CommissionSchedule = field(default_factory=CommissionSchedule)
    initial_capital: float = 1_000_000.0
    slippage_fraction: float = 0.0005
    buying_power_multiple: float = 4.0
    margin: MarginInterest | None = field(default_factory=MarginInterest)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.initial_capital) and self.initial_capital > 0):
            raise ValueError(f"initial_capital must be > 0 USD, got {self.initial_capital!r}")
        if not (math.isfinite(self.slippage_fraction) and 0 <= self.slippage_fraction < 1):
            raise ValueError(f"slippage_fraction must be in [0, 1), got {self.slippage_fraction!r}")
        if not (math.isfinite(self.buying_power_multiple) and self.buying_power_multiple >= 0):
            raise ValueError(f"buying_power_multiple must be >= 0, got {self.buying_power_multiple!r}")

    @classmethod
    def from_settings(cls, settings: Settings) -> EmaBacktestConfig:
        """The configuration from `core.settings.Settings` (strategy, commission, capital, slippage)."""
        return cls(
            params=EmaParams.from_settings(settings),
            commission=CommissionSchedule.from_settings(settings),
            initial_capital=settings.backtest_initial_capital,
            slippage_fraction=settings.backtest_slippage_fraction,
            margin=MarginInterest.from_settings(settings),
        )


@dataclass(frozen=True, slots=True)
class EmaBacktestResult:
    """What a backtest produced.

    Attributes:
        equity: one row per session of the window, index `session` (DatetimeIndex of session dates); columns
            `open, low, close` (SMH, USD), `equity_open` (E0, USD), `stop_price` (USD, NaN when flat at the open),
            `stopped` (bool), `bear_exit_at_open` (bool), `decision_price` (USD), `provisional_signal`,
            `action` (BUY/SELL/HOLD/NO_TRADE), `shares_traded`, `leverage`, `leverage_source`, `vix_used`,
            `ema_fast`, `ema_slow` (final, USD), `signal` (final), `position_qty` (shares at the close),
            `cash` (USD), `equity` (USD at the close), `interest` (USD, margin interest charged that session),
            `daily_return` (fraction), `drawdown` (fraction >= 0),
            `exposed` (bool).
        trades: one row per round trip: `entry_session`, `entry_price` (USD, fill), `shares`, `leverage`,
            `vix_used`, `exit_session`, `exit_price` (USD, fill; NaN while open), `exit_reason`
            (`bear_before_close`, `daily_stop`, `bear_at_update_next_open`, or `open` at the end),
            `commission` (USD, both sides), `interest` (USD, margin interest while held), `pnl` (USD after
            commissions and interest; marked at the last close while open),
            `return` (pnl / entry value, fraction), `sessions_held`.
        metrics: the report figures (closed round trips only).
        warmup_sessions: sessions of closes folded before the window.
        config: the configuration used.
    """

    equity: pd.DataFrame
    trades: pd.DataFrame
    metrics: PerformanceMetrics
    warmup_sessions: int
    config: EmaBacktestConfig


def _to_day(value: date | str | pd.Timestamp) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        raise ValueError(f"not a date: {value!r} (expected YYYY-MM-DD)") from None
    if ts is pd.NaT or ts.tz is not None or ts != ts.normalize():
        raise ValueError(f"not a session date: {value!r} (expected YYYY-MM-DD)")
    return ts


def default_window(smh: pd.DataFrame, min_history: int = 250) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The longest window the bars allow: from the first session with `min_history` sessions before it to the last.

    Raises:
        ValueError: fewer than `min_history + 1` sessions.
    """
    if len(smh) <= min_history:
        raise ValueError(f"{len(smh)} sessions of SMH bars: more than {min_history} needed for a backtest")
    return smh.index[min_history], smh.index[-1]


def _vix_columns(sessions: pd.DatetimeIndex, vix: pd.DataFrame | pd.Series | None) -> tuple[list, list, list]:
    """Per session: that session's VIX close (NaN if absent), the latest VIX close strictly before it and its date."""
    n = len(sessions)
    if vix is None or len(vix) == 0:
        return [math.nan] * n, [math.nan] * n, [None] * n
    v = vix["close"] if isinstance(vix, pd.DataFrame) else vix
    v = v.astype(float)
    v = v[np.isfinite(v.to_numpy()) & (v.to_numpy() > 0)]
    vdates = v.index.to_numpy(dtype="datetime64[ns]")
    vvals = v.to_numpy(dtype=float)
    sdates = sessions.to_numpy(dtype="datetime64[ns]")
    same = np.searchsorted(vdates, sdates, side="left")
    has_same = (same < len(vdates)) & (vdates[np.minimum(same, len(vdates) - 1)] == sdates)
    current = np.where(has_same, vvals[np.minimum(same, len(vvals) - 1)], np.nan)
    before = same - 1
    ok = before >= 0
    last = np.where(ok, vvals[np.maximum(before, 0)], np.nan)
    last_dates = [pd.Timestamp(vdates[j]).date() if o else None for j, o in zip(before, ok, strict=True)]
    return current.tolist(), last.tolist(), last_dates


def run_ema_backtest(
    smh: pd.DataFrame,
    vix: pd.DataFrame | pd.Series | None,
    start: date | str | pd.Timestamp | None = None,
    end: date | str | pd.Timestamp | None = None,
    config: EmaBacktestConfig | None = None,
) -> EmaBacktestResult:
    """Run the EMA 25/125 backtest on daily bars over sessions `start..end` (both included).

    Args:
        smh: daily SMH bars, index = session dates (DatetimeIndex, increasing), columns `open, high, low, close`
            (USD); optional column `decision_price` (USD) for the 15:55 price (default: the close).
        vix: daily VIX bars (DataFrame with `close`, or a Series of closes) indexed by session date; None when
            there is no VIX (the leverage then falls back to the default and says why).
        start, end: first and last session of the window (dates or YYYY-MM-DD); default: the longest window
            the bars allow (:func:`default_window`).
        config: parameters (default: strategies.md's).

    Returns:
        An :class:`EmaBacktestResult`.

    Raises:
        ValueError: a bad date; no session in the window; fewer than `min_history` sessions before `start`
            (the message names the window start and both counts); a column missing.
    """
    cfg = config or EmaBacktestConfig()
    p = cfg.params
    for col in ("open", "high", "low", "close"):
        if col not in smh.columns:
            raise ValueError(f"SMH bars lack the column {col!r}")
    first, last = default_window(smh, p.min_history) if (start is None or end is None) else (None, None)
    t0 = _to_day(start) if start is not None else first
    t1 = _to_day(end) if end is not None else last
    if t1 < t0:
        raise ValueError(f"window end {t1.date()} is before its start {t0.date()}")
    idx = smh.index
    in_window = (idx >= t0) & (idx <= t1)
    if not in_window.any():
        raise ValueError(f"no SMH session between {t0.date()} and {t1.date()}")
    warm = smh.loc[idx < t0, "close"]
    if len(warm) < p.min_history:
        raise ValueError(
            f"EMA warm-up too short: {len(warm)} sessions of SMH closes before {t0.date()}, at least "
            f"{p.min_history} needed (start later, or give more history)"
        )
    state = init_ema_state(warm, fast=p.fast, slow=p.slow, min_history=p.min_history)

    win = smh.loc[in_window]
    sessions = win.index
    days = [d.date() for d in sessions]
    o = win["open"].astype(float).tolist()
    lo = win["low"].astype(float).tolist()
    c = win["close"].astype(float).tolist()
    dp = win["decision_price"].astype(float).tolist() if "decision_price" in win.columns else c
    vix_cur, vix_last, vix_last_day = _vix_columns(sessions, vix)

    fee = cfg.commission
    slip = cfg.slippage_fraction
    stop_f = p.stop_fraction
    cash = float(cfg.initial_capital)
    qty = 0
    pending_exit = False
    trade: dict | None = None
    trades: list[dict] = []
    rows: list[tuple] = []

    def close_trade(i: int, fill: float, commission: float, reason: str) -> None:
        nonlocal trade
        assert trade is not None
        trade["exit_session"] = days[i]
        trade["exit_price"] = fill
        trade["exit_reason"] = reason
        trade["commission"] += commission
        trade["pnl"] = (fill - trade["entry_price"]) * trade["shares"] - trade["commission"] - trade["interest"]
        trade["return"] = trade["pnl"] / (trade["entry_price"] * trade["shares"])
        trade["sessions_held"] = i - trade["_entry_i"]
        trades.append(trade)
        trade = None

    interest_paid: list[float] = []
    for i in range(len(days)):
        day = days[i]
        # 0. Margin interest on the debit balance carried since the previous close.
        charge = 0.0
        if i > 0 and cash < 0 and cfg.margin is not None:
            charge = cfg.margin.interest(-cash, (day - days[i - 1]).days)
            cash -= charge
            if trade is not None:
                trade["interest"] += charge
        interest_paid.append(charge)
        # 1. BEAR found at yesterday's update: exit at today's open.
        bear_exit = False
        if pending_exit and qty > 0:
            fill = o[i] * (1.0 - slip)
            fee_usd = fee(qty, fill)
            cash += qty * fill - fee_usd
            close_trade(i, fill, fee_usd, "bear_at_update_next_open")
            qty = 0
            bear_exit = True
        pending_exit = False
        # 2. Day start: E0 and P_ref at the open.
        e0 = cash + qty * o[i]
        p_stop = math.nan
        stopped = False
        exposed = qty > 0  # held into the session (a stop later today does not undo that)
        # 3. Daily equity stop on the session's low.
        if qty > 0:
            p_stop = stop_price(o[i], e0, qty, stop_f)
            hit = stop_fill_price(o[i], lo[i], p_stop)
            if hit is not None:
                fill = hit * (1.0 - slip)
                fee_usd = fee(qty, fill)
                cash += qty * fill - fee_usd
                close_trade(i, fill, fee_usd, "daily_stop")
                qty = 0
                stopped = True
        # 4. The 15:55 decision at the decision price.
        price = dp[i]
        nl = cash + qty * price
        action, traded, prov_sig, lev, lev_src, vix_used = "NO_DECISION", 0, None, math.nan, None, math.nan
        if nl > 0:
            d = decide_before_close(
                state,
                price,
                qty,
                nl,
                cfg.buying_power_multiple * nl,
                VixInfo(current=vix_cur[i], last_close=vix_last[i], last_close_session=vix_last_day[i]),
                p,
                session=day,
            )
            action, prov_sig, lev, lev_src = d.action.value, d.signal.value, d.leverage, d.vix_source
            vix_used = d.vix_used if d.vix_used is not None else math.nan
            if d.action is Action.BUY:
                fill = price * (1.0 + slip)
                fee_usd = fee(d.shares, fill)
                cash -= d.shares * fill + fee_usd
                qty = traded = d.shares
                trade = {
                    "entry_session": day,
                    "entry_price": fill,
                    "shares": d.shares,
                    "leverage": d.leverage,
                    "vix_used": vix_used,
                    "exit_session": None,
                    "exit_price": math.nan,
                    "exit_reason": "open",
                    "commission": fee_usd,
                    "interest": 0.0,
                    "pnl": math.nan,
                    "return": math.nan,
                    "sessions_held": 0,
                    "_entry_i": i,
                }
                exposed = True
            elif d.action is Action.SELL:
                fill = price * (1.0 - slip)
                fee_usd = fee(qty, fill)
                cash += qty * fill - fee_usd
                traded = qty
                close_trade(i, fill, fee_usd, "bear_before_close")
                qty = 0
        # 5. Update at the close.
        upd = close_update(state, day, c[i], qty)
        state = upd.state
        pending_exit = upd.exit_next_open
        rows.append(
            (
                e0,
                p_stop,
                stopped,
                bear_exit,
                price,
                prov_sig,
                action,
                traded,
                lev,
                lev_src,
                vix_used,
                state.ema_fast,
                state.ema_slow,
                upd.signal.value,
                qty,
                cash,
                cash + qty * c[i],
                exposed,
            )
        )

    cols = [
        "equity_open",
        "stop_price",
        "stopped",
        "bear_exit_at_open",
        "decision_price",
        "provisional_signal",
        "action",
        "shares_traded",
        "leverage",
        "leverage_source",
        "vix_used",
        "ema_fast",
        "ema_slow",
        "signal",
        "position_qty",
        "cash",
        "equity",
        "exposed",
    ]
    eq = pd.DataFrame(rows, columns=cols, index=sessions)
    eq.index.name = "session"
    eq.insert(0, "open", o)
    eq.insert(1, "low", lo)
    eq.insert(2, "close", c)
    eq["interest"] = interest_paid
    values = eq["equity"].to_numpy()
    prev = np.concatenate([[cfg.initial_capital], values[:-1]])
    eq["daily_return"] = values / prev - 1.0
    peaks = np.maximum.accumulate(np.concatenate([[cfg.initial_capital], values]))[1:]
    eq["drawdown"] = 1.0 - values / peaks

    closed_pnl = [t["pnl"] for t in trades]
    if trade is not None:  # still open at the end: marked at the last close, not counted as a round trip
        last_close = c[-1]
        trade["pnl"] = (last_close - trade["entry_price"]) * trade["shares"] - trade["commission"] - trade["interest"]
        trade["return"] = trade["pnl"] / (trade["entry_price"] * trade["shares"])
        trade["sessions_held"] = len(days) - 1 - trade["_entry_i"]
        trades.append(trade)
    trade_cols = [
        "entry_session",
        "entry_price",
        "shares",
        "leverage",
        "vix_used",
        "exit_session",
        "exit_price",
        "exit_reason",
        "commission",
        "interest",
        "pnl",
        "return",
        "sessions_held",
    ]
    tr = pd.DataFrame([{k: t[k] for k in trade_cols} for t in trades], columns=trade_cols)
    metrics = performance_metrics(eq["equity"], cfg.initial_capital, np.asarray(closed_pnl), eq["exposed"])
    return EmaBacktestResult(equity=eq, trades=tr, metrics=metrics, warmup_sessions=len(warm), config=cfg)


def slippage_sensitivity(
    smh: pd.DataFrame,
    vix: pd.DataFrame | pd.Series | None,
    start: date | str | pd.Timestamp | None = None,
    end: date | str | pd.Timestamp | None = None,
    config: EmaBacktestConfig | None = None,
    bps: tuple[float, ...] = SENSITIVITY_BPS,
) -> pd.DataFrame:
    """The backtest again at each slippage level in ``bps`` (basis points per fill), every other cost unchanged.

    Returns:
        One row per level, index `slippage_bp`; columns `cagr`, `max_drawdown`, `sharpe`, `total_return`
        (fractions), `round_trips_per_year`, `win_rate` (fraction), `end_equity` (USD), `commission`,
        `interest` (USD over the window).

    Raises:
        ValueError: as :func:`run_ema_backtest`, or a negative level.
    """
    import dataclasses

    cfg = config or EmaBacktestConfig()
    rows = []
    for bp in bps:
        if not (math.isfinite(bp) and bp >= 0):
            raise ValueError(f"slippage levels must be >= 0 bp, got {bp!r}")
        res = run_ema_backtest(smh, vix, start, end, dataclasses.replace(cfg, slippage_fraction=bp / 10_000))
        m = res.metrics
        rows.append({"slippage_bp": bp, "cagr": m.cagr, "max_drawdown": m.max_drawdown, "sharpe": m.sharpe,
                     "total_return": m.total_return, "round_trips_per_year": m.round_trips_per_year,
                     "win_rate": m.win_rate, "end_equity": m.end_equity,
                     "commission": float(res.trades["commission"].sum()) if len(res.trades) else 0.0,
                     "interest": float(res.equity["interest"].sum())})
    return pd.DataFrame(rows).set_index("slippage_bp")
