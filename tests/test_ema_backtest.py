"""The EMA backtest on crafted daily bars (each rule of strategies.md's "Backtest on daily bars") and on real data."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.bars import BarsError, load_daily_bars
from core.backtest.ema import EmaBacktestConfig, run_ema_backtest
from core.backtest.metrics import max_drawdown
from core.costs import CommissionSchedule, ib_fixed_commission
from core.strategies.ema import EmaParams, init_ema_state, stop_fill_price, stop_price
from deployments.cli import main

from tests.data import DATA_DIR, require_bars

REAL_FILES = ("daily/SMH.csv", "daily/VIX.csv")

CAPITAL = 1_000_000.0
FRICTIONLESS = EmaBacktestConfig(slippage_fraction=0.0, margin=None)
"""No slippage, no margin interest: the rule tests check prices exactly (the cost tests below add them)."""


def make_bars(warm_closes, window_rows, start="2020-01-01"):
    """Warm-up sessions with open = high = low = close, then window rows (open, low, close[, decision_price])."""
    n_warm = len(warm_closes)
    idx = pd.bdate_range(start, periods=n_warm + len(window_rows), name="session")
    rows = [(c, c, c, c, c) for c in warm_closes]
    for r in window_rows:
        o, lo, c = r[:3]
        dp = r[3] if len(r) > 3 else c
        rows.append((o, max(o, c, dp), lo, c, dp))
    df = pd.DataFrame(rows, index=idx, columns=["open", "high", "low", "close", "decision_price"])
    return df, idx[n_warm]


def vix_const(bars, value=20.0):
    return pd.Series(value, index=bars.index, name="close")


RISING = list(np.linspace(100.0, 130.0, 300))  # a steady up trend: BULL at the end of the warm-up


def test_gap_down_stop_fills_at_min_of_open_and_stop_then_reenters_same_day():
    bars, first = make_bars(
        RISING,
        [
            (130.5, 130.5, 130.5),  # day 0: BULL and flat -> buy at the close
            (120.0, 115.0, 125.0),  # day 1: gap down 8 %, low through the stop, close still BULL -> re-enter
            (125.0, 125.0, 125.0),  # day 2: hold
        ],
    )
    res = run_ema_backtest(bars, vix_const(bars), first, bars.index[-1], FRICTIONLESS)
    eq, tr = res.equity, res.trades
    q = math.floor(CAPITAL * 3.0 / 130.5)
    assert tr.loc[0, "shares"] == q and tr.loc[0, "entry_price"] == 130.5
    cash = CAPITAL - q * 130.5 - ib_fixed_commission(q, 130.5)
    e0 = cash + q * 120.0  # equity at the gap-down open
    assert eq["equity_open"].iloc[1] == pytest.approx(e0)
    p_stop = stop_price(120.0, e0, q, 0.02)
    assert p_stop == pytest.approx(120.0 - 0.02 * e0 / q)
    assert eq["stop_price"].iloc[1] == pytest.approx(p_stop)
    assert tr.loc[0, "exit_reason"] == "daily_stop"
    assert tr.loc[0, "exit_price"] == pytest.approx(min(120.0, p_stop))
    # the stop was re-armed at the open: the overnight gap (130.5 -> 120) is not stopped at the open
    assert tr.loc[0, "exit_price"] < 120.0
    # re-entry at the same session's close, sized on the equity after the stop
    assert tr.loc[1, "entry_session"] == tr.loc[0, "exit_session"] == bars.index[-2].date()
    assert tr.loc[1, "entry_price"] == 125.0
    assert eq["action"].tolist() == ["BUY", "BUY", "HOLD"]
    assert bool(eq["stopped"].iloc[1])
    assert len(tr) == 2 and tr.loc[1, "exit_reason"] == "open"
    assert res.metrics.round_trips == 1 and res.metrics.win_rate == 0.0


def test_exposure_counts_a_stopped_session_without_reentry():
    warm = [100.0] * 299 + [100.5]
    bars, first = make_bars(
        warm,
        [
            (100.5, 100.5, 100.5),  # day 0: buy at the close (exposed)
            (100.5, 90.0, 95.0),  # day 1: stopped; the close makes the signal BEAR: no re-entry (exposed)
            (95.0, 95.0, 95.0),  # day 2: flat (not exposed)
        ],
    )
    res = run_ema_backtest(bars, vix_const(bars), first, bars.index[-1])
    assert res.equity["action"].tolist() == ["BUY", "HOLD", "HOLD"]
    assert res.equity["stopped"].tolist() == [False, True, False]
    assert res.equity["exposed"].tolist() == [True, True, False]
    assert res.metrics.exposure == pytest.approx(2 / 3)


def test_stop_not_triggered_when_low_stays_above():
    bars, first = make_bars(RISING, [(130.5, 130.5, 130.5), (131.0, 130.5, 131.5), (131.5, 131.5, 131.5)])
    res = run_ema_backtest(bars, vix_const(bars), first, bars.index[-1])
    assert not res.equity["stopped"].any()
    assert res.equity["position_qty"].iloc[-1] > 0 and res.metrics.round_trips == 0


def test_bear_at_update_exits_at_next_open_and_may_reenter():
    # flat warm-up with a last uptick: EMA25 a hair above EMA125; low leverage and a wide stop keep the stop away
    warm = [100.0] * 299 + [100.5]
    bars, first = make_bars(
        warm,
        [
            (100.5, 100.5, 100.5),  # day 0: BULL -> buy at the close
            (100.5, 99.0, 99.0, 100.6),  # day 1: the 15:55 price says BULL (hold), the close makes the final BEAR
            (99.5, 99.5, 103.0),  # day 2: exit at the open 99.5; the close is BULL again -> re-enter
            (99.5, 99.5, 99.5),  # day 3: whatever
        ],
    )
    cfg = EmaBacktestConfig(params=EmaParams(vix_table=(), default_leverage=1.0, stop_fraction=0.2),
                            slippage_fraction=0.0, margin=None)
    res = run_ema_backtest(bars, vix_const(bars), first, bars.index[-1], cfg)
    eq, tr = res.equity, res.trades
    assert eq["provisional_signal"].iloc[1] == "BULL" and eq["action"].iloc[1] == "HOLD"
    assert eq["signal"].iloc[1] == "BEAR" and eq["position_qty"].iloc[1] > 0
    assert bool(eq["bear_exit_at_open"].iloc[2])
    assert tr.loc[0, "exit_reason"] == "bear_at_update_next_open"
    assert tr.loc[0, "exit_session"] == bars.index[-2].date()
    assert tr.loc[0, "exit_price"] == 99.5  # the next session's open
    assert eq["equity_open"].iloc[2] == pytest.approx(
        eq["cash"].iloc[1] + tr.loc[0, "shares"] * 99.5 - ib_fixed_commission(tr.loc[0, "shares"], 99.5)
    )
    assert eq["action"].iloc[2] == "BUY" and tr.loc[1, "entry_session"] == bars.index[-2].date()


def test_bear_at_decision_sells_at_the_close():
    bars, first = make_bars(
        [100.0] * 299 + [100.5],
        [(100.5, 100.5, 100.5), (100.5, 99.0, 99.0), (99.0, 99.0, 99.0)],
    )
    cfg = EmaBacktestConfig(params=EmaParams(vix_table=(), default_leverage=1.0, stop_fraction=0.2),
                            slippage_fraction=0.0, margin=None)
    res = run_ema_backtest(bars, vix_const(bars), first, bars.index[-1], cfg)
    assert res.equity["action"].tolist() == ["BUY", "SELL", "HOLD"]
    assert res.trades.loc[0, "exit_reason"] == "bear_before_close" and res.trades.loc[0, "exit_price"] == 99.0
    assert not res.equity["bear_exit_at_open"].any()


def test_leverage_follows_session_vix_and_falls_back_to_previous_close():
    bars, first = make_bars(RISING, [(130.5, 130.5, 130.5)])
    vix = vix_const(bars, 11.5)
    res = run_ema_backtest(bars, vix, first, first)
    assert res.equity["leverage"].iloc[0] == 3.75 and res.trades.loc[0, "shares"] == math.floor(3.75e6 / 130.5)
    vix = vix.drop(first)  # no VIX for the session: its latest daily close (11.5) stands in
    vix.iloc[-1] = 12.5
    res = run_ema_backtest(bars, vix, first, first)
    assert res.equity["leverage_source"].iloc[0] == "last_close" and res.equity["leverage"].iloc[0] == 3.5
    res = run_ema_backtest(bars, None, first, first)
    assert res.equity["leverage_source"].iloc[0] == "default" and res.equity["leverage"].iloc[0] == 3.0


def random_walk_bars(seed: int = 3, n: int = 500):
    """300 warm-up sessions and 200 window sessions of a random walk with gaps and intraday lows."""
    rng = np.random.default_rng(seed)
    closes = 100 * np.exp(np.cumsum(rng.normal(0.0005, 0.02, n)))
    opens = closes * np.exp(rng.normal(0, 0.005, n))
    lows = np.minimum(opens, closes) * (1 - np.abs(rng.normal(0, 0.01, n)))
    bars, _ = make_bars(list(closes[:300]), list(zip(opens[300:], lows[300:], closes[300:], strict=True)))
    return bars, bars.index[300]


def test_accounting_commissions_and_slippage():
    bars, first = random_walk_bars()
    cfg = EmaBacktestConfig(slippage_fraction=0.001, commission=CommissionSchedule())
    res = run_ema_backtest(bars, vix_const(bars, 13.5), first, bars.index[-1], cfg)
    tr, eq = res.trades, res.equity
    assert len(tr) > 3
    # every dollar of equity change is a round trip's P&L (the open one marked at the last close)
    assert eq["equity"].iloc[-1] - CAPITAL == pytest.approx(tr["pnl"].sum(), rel=1e-9)
    # entries pay slippage up, commissions both sides
    dec = eq[eq["action"] == "BUY"]
    np.testing.assert_allclose(tr["entry_price"].to_numpy(), dec["decision_price"].to_numpy() * 1.001)
    closed = tr[tr["exit_reason"] != "open"]
    expected = [
        ib_fixed_commission(s, a) + ib_fixed_commission(s, b)
        for s, a, b in zip(closed["shares"], closed["entry_price"], closed["exit_price"], strict=True)
    ]
    np.testing.assert_allclose(closed["commission"].to_numpy(), expected)
    # metrics from the curve
    assert res.metrics.max_drawdown == pytest.approx(eq["drawdown"].max())
    assert res.metrics.max_drawdown == pytest.approx(max_drawdown(eq["equity"], CAPITAL))
    assert res.metrics.round_trips == len(closed)
    assert res.metrics.win_rate == pytest.approx((closed["pnl"] > 0).mean())


def test_emas_in_equity_curve_equal_recomputation():
    rng = np.random.default_rng(5)
    closes = 50 * np.exp(np.cumsum(rng.normal(0, 0.02, 420)))
    bars, _ = make_bars(list(closes[:300]), [(c, c * 0.999, c) for c in closes[300:]])
    res = run_ema_backtest(bars, vix_const(bars), bars.index[300], bars.index[-1])
    ref = bars["close"].ewm(span=25, adjust=False).mean().iloc[300:]
    np.testing.assert_allclose(res.equity["ema_fast"].to_numpy(), ref.to_numpy(), rtol=1e-12)
    assert res.warmup_sessions == 300


def test_warmup_too_short_is_refused():
    bars, first = make_bars(list(np.linspace(100, 130, 249)), [(130.0, 130.0, 130.0)])
    with pytest.raises(ValueError, match=r"warm-up too short: 249 sessions.*at least 250"):
        run_ema_backtest(bars, None, first, first)


def test_missing_bars_file_named(tmp_path):
    with pytest.raises(BarsError, match=str(tmp_path / "daily" / "SMH.csv")):
        load_daily_bars(tmp_path, "SMH")


def _write_bars(folder: Path, name: str, df: pd.DataFrame) -> None:
    (folder / "daily").mkdir(parents=True, exist_ok=True)
    out = df[["open", "high", "low", "close"]].copy()
    out["volume"] = 0
    out.index = out.index.strftime("%Y-%m-%d")
    out.to_csv(folder / "daily" / f"{name}.csv", index_label="timestamp")


def test_cli_writes_three_files_and_prints_metrics(tmp_path, capsys):
    rng = np.random.default_rng(11)
    closes = 100 * np.exp(np.cumsum(rng.normal(0.0005, 0.015, 400)))
    bars, first = make_bars(list(closes[:300]), [(c, c * 0.99, c) for c in closes[300:]])
    _write_bars(tmp_path / "data", "SMH", bars)
    _write_bars(
        tmp_path / "data", "VIX", pd.DataFrame({c: 15.0 for c in ("open", "high", "low", "close")}, index=bars.index)
    )
    out = tmp_path / "out"
    code = main(
        [
            "backtest",
            "ema",
            "--from",
            str(first.date()),
            "--to",
            str(bars.index[-1].date()),
            "--out",
            str(out),
            "--data-dir",
            str(tmp_path / "data"),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    for name in ("trades.csv", "equity.csv", "equity_drawdown.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0
    assert (out / "equity_drawdown.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    eq = pd.read_csv(out / "equity.csv")
    assert len(eq) == 100 and eq["session"].iloc[0] == str(first.date())
    for label in ("CAGR", "max drawdown", "Sharpe", "round trips / year", "win rate", "exposure", "99.30 %",
                  "Sortino", "Calmar", "annual volatility", "monthly returns", "slippage sensitivity",
                  "margin interest at benchmark"):
        assert label in printed
    for name in ("monthly_returns.csv", "sensitivity.csv"):
        assert (out / name).is_file()
    assert pd.read_csv(out / "sensitivity.csv")["slippage_bp"].tolist() == [0, 2, 5, 10]


def test_cli_missing_data_names_file(tmp_path, capsys):
    code = main(["backtest", "ema", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and str(tmp_path / "daily" / "SMH.csv") in err


# --- Real data ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_bars():
    require_bars(*REAL_FILES)
    return load_daily_bars(DATA_DIR, "SMH"), load_daily_bars(DATA_DIR, "VIX")


@pytest.mark.needs_data
def test_real_window_runs_and_warms_up_on_history(real_bars):
    smh, vix = real_bars
    res = run_ema_backtest(smh, vix, "2022-07-01", "2026-01-31")
    assert res.equity.index[0] == pd.Timestamp("2022-07-01") and res.equity.index[-1] == pd.Timestamp("2026-01-30")
    assert res.warmup_sessions >= 250
    m = res.metrics
    assert m.sessions == len(res.equity) and 0 <= m.max_drawdown < 1 and 0 <= m.exposure <= 1
    # the final EMA of the window equals a recomputation over every close up to it
    full = init_ema_state(smh.loc[:"2026-01-30", "close"])
    assert res.equity["ema_slow"].iloc[-1] == full.ema_slow
    # every decision had its session's VIX close
    assert (res.equity["leverage_source"] == "current").all()


@pytest.mark.needs_data
def test_full_history_is_fast(real_bars):
    smh, vix = real_bars
    t0 = time.perf_counter()
    res = run_ema_backtest(smh, vix)
    elapsed = time.perf_counter() - t0
    assert len(res.equity) > 3000
    assert elapsed < 1.0, f"full-history backtest took {elapsed:.3f} s"


@pytest.mark.needs_data
def test_cli_on_real_data(tmp_path, capsys):
    require_bars(*REAL_FILES)
    code = main(
        [
            "backtest",
            "ema",
            "--from",
            "2022-07-01",
            "--to",
            "2026-01-31",
            "--out",
            str(tmp_path),
            "--data-dir",
            str(DATA_DIR),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and "2022-07-01 .. 2026-01-30" in printed
    assert {"trades.csv", "equity.csv", "equity_drawdown.png"} <= {p.name for p in tmp_path.iterdir()}


# --- Costs: slippage on stops, margin interest, sensitivity, tearsheet -------------------------------------------


def test_stop_fills_at_its_price_or_worse_then_slips():
    """A stop-market order fills at the worse of the stop and the open (`stop_fill_price`), and slippage comes
    on top: never exactly at the stop price."""
    bars, first = make_bars(
        RISING, [(130.5, 130.5, 130.5), (120.0, 115.0, 125.0), (125.0, 125.0, 125.0)]
    )
    cfg = EmaBacktestConfig(slippage_fraction=0.0005, margin=None)
    res = run_ema_backtest(bars, vix_const(bars), first, bars.index[-1], cfg)
    tr = res.trades
    assert tr.loc[0, "entry_price"] == pytest.approx(130.5 * 1.0005)
    assert tr.loc[0, "exit_reason"] == "daily_stop"
    # the stop is armed from the day's open (E0 at 09:30), so it lies below the open: the fill is the stop, 5 bp worse
    p_stop = res.equity["stop_price"].iloc[1]
    assert p_stop < 120.0
    assert tr.loc[0, "exit_price"] == pytest.approx(p_stop * (1 - 0.0005)) and tr.loc[0, "exit_price"] < p_stop
    # a session opening below the stop (a gap through it) fills at the open
    assert stop_fill_price(110.0, 105.0, p_stop) == 110.0


def test_margin_interest_on_the_debit_balance_per_calendar_day():
    """IB's blended tiers, 360-day year, charged for the nights the loan is carried (a weekend counts 3 days)."""
    from core.costs import MarginInterest

    margin = MarginInterest(benchmark_rate=0.05)
    # 600,000 borrowed: 100,000 at BM + 1.5 % and 500,000 at BM + 1 % (IB's example page's arithmetic)
    assert margin.interest(600_000, 1) == pytest.approx((100_000 * 0.065 + 500_000 * 0.06) / 360)
    assert margin.interest(0, 3) == 0.0
    with pytest.raises(ValueError, match="borrowed_usd"):
        margin.interest(-1.0, 1)
    bars, first = make_bars(RISING, [(130.5, 130.5, 130.5)] + [(130.5, 130.5, 130.5)] * 6)
    cfg = EmaBacktestConfig(slippage_fraction=0.0, margin=margin)
    res = run_ema_backtest(bars, vix_const(bars), first, bars.index[-1], cfg)
    eq = res.equity
    assert eq["interest"].iloc[0] == 0.0  # bought at the close: nothing carried yet
    debit = -eq["cash"].iloc[0]
    assert debit > 1_000_000  # 3x leverage on 1,000,000 USD borrows about 2,000,000
    gaps = [(b - a).days for a, b in zip(eq.index[:-1], eq.index[1:], strict=True)]
    assert 3 in gaps  # a weekend in the window
    cash = -debit
    for k, days in enumerate(gaps, start=1):
        expected = margin.interest(-cash, days)
        assert eq["interest"].iloc[k] == pytest.approx(expected)
        cash -= expected
    # the open trade carries the interest in its P&L, so the equity change still adds up to the trades' P&L
    assert eq["equity"].iloc[-1] - CAPITAL == pytest.approx(res.trades["pnl"].sum(), rel=1e-9)
    assert res.trades["interest"].sum() == pytest.approx(eq["interest"].sum())


def test_sensitivity_table_falls_with_slippage_and_tearsheet_is_empyricals():
    import empyrical

    from core.backtest.ema import slippage_sensitivity
    from core.backtest.metrics import tearsheet

    bars, first = random_walk_bars()
    table = slippage_sensitivity(bars, vix_const(bars, 13.5), first, bars.index[-1])
    assert table.index.tolist() == [0.0, 2.0, 5.0, 10.0]
    assert table["end_equity"].is_monotonic_decreasing and table["end_equity"].iloc[0] > table["end_equity"].iloc[-1]
    res = run_ema_backtest(bars, vix_const(bars, 13.5), first, bars.index[-1])
    assert table.loc[5.0, "end_equity"] == pytest.approx(res.metrics.end_equity)  # the default is 5 bp
    ts = tearsheet(res.equity["daily_return"])
    r = res.equity["daily_return"]
    assert ts.sortino == pytest.approx(empyrical.sortino_ratio(r))
    assert ts.calmar == pytest.approx(empyrical.calmar_ratio(r))
    assert ts.annual_volatility == pytest.approx(float(r.std(ddof=1) * math.sqrt(252)))
    # monthly returns compound the daily ones
    month = r[(r.index.year == r.index[0].year) & (r.index.month == r.index[0].month)]
    assert ts.monthly_returns.iloc[0] == pytest.approx(float(np.prod(1 + month) - 1))
