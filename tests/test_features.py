"""Tests of core.features: no look-ahead on both hourly grids, agreement with the `ta` library, input checks."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ta  # an independent TA implementation (dev dependency of the lock)

from core.bars import load_hourly_bars
from core.features import (
    FEATURES,
    MIN_HISTORY_WEEKS,
    FeatureInputError,
    atr_wilder,
    bollinger,
    compute_features,
    first_complete_row,
    macd,
    rsi_wilder,
)
from tests.data import DATA_DIR, require_bars

RAW_IBKR = DATA_DIR.parent / "raw" / "ibkr_TSLA_1h.csv"


def _need(path: Path) -> None:
    require_bars(path)


def yf_bars(symbol: str) -> pd.DataFrame:
    """The 1h bars of shared/data/bars (yfinance grid 09:30, 10:30 … 15:30)."""
    _need(DATA_DIR / "1h" / f"{symbol}.csv")
    return load_hourly_bars(DATA_DIR, symbol)


def ibkr_bars() -> pd.DataFrame:
    """raw/ibkr_TSLA_1h.csv (IB grid 09:30, 10:00, 11:00 … 15:00): naive times at a fixed UTC-5 (TWS in
    America/Lima), so localize as Etc/GMT+5 and convert to New York (raw/SOURCES.md). Volume in 100-share lots."""
    _need(RAW_IBKR)
    df = pd.read_csv(RAW_IBKR)
    idx = pd.to_datetime(df.pop("Date")).dt.tz_localize("Etc/GMT+5").dt.tz_convert("America/New_York")
    df.index = pd.DatetimeIndex(idx)
    df.columns = [c.lower() for c in df.columns]
    return df[["open", "high", "low", "close", "volume"]]


# ------------------------------------------------------------------------------------------------------------
# no look-ahead


def _cut_points(idx: pd.DatetimeIndex, start: int, rng: np.random.Generator, n_random: int = 25) -> list[int]:
    """Random rows after `start` plus the tricky ones: first/last bar of sessions, of weeks, and 4h boundaries."""
    local = idx.tz_convert("America/New_York")
    day = np.asarray(local.normalize().asi8)
    new_day = np.flatnonzero(np.diff(day) != 0) + 1  # first bar of a session
    last_of_day = new_day - 1
    week = (day // (86_400 * 10**9) + 3) // 7  # Monday-based week number
    new_week = np.flatnonzero(np.diff(week) != 0) + 1
    minutes = np.asarray(local.hour * 60 + local.minute)
    h4_edge = np.flatnonzero((minutes >= 13 * 60 + 30) & (np.r_[0, minutes[:-1]] < 13 * 60 + 30))
    picks: list[int] = list(rng.integers(start, len(idx), n_random))
    for arr in (new_day, last_of_day, new_week, new_week - 1, h4_edge, h4_edge - 1):
        arr = arr[arr >= start]
        if len(arr):
            picks += list(rng.choice(arr, size=min(4, len(arr)), replace=False))
    picks.append(len(idx) - 1)
    return sorted(set(int(p) for p in picks))


def _assert_truncation_invariant(bars: pd.DataFrame) -> int:
    full = compute_features(bars)
    start = first_complete_row(full)
    assert start < len(full) - 100, "too little data after the warm-up"
    cuts = _cut_points(bars.index, start - 50, np.random.default_rng(7))
    for t in cuts:
        part = compute_features(bars.iloc[: t + 1])
        np.testing.assert_allclose(
            part.iloc[-1].to_numpy(), full.iloc[t].to_numpy(), rtol=1e-12, atol=1e-12, equal_nan=True,
            err_msg=f"features at {bars.index[t]} change when later bars are added",
        )
    return len(cuts)


@pytest.mark.needs_data
def test_no_lookahead_yfinance_grid():
    bars = yf_bars("AAPL")
    assert list(bars.index[:2].strftime("%H:%M")) == ["09:30", "10:30"]
    assert _assert_truncation_invariant(bars) >= 40


@pytest.mark.needs_data
def test_no_lookahead_ibkr_grid():
    bars = ibkr_bars()
    # the IB grid: a 30-minute 09:30 bar, then on the hour; 4 bars on 13:00 early closes
    assert list(bars.index[:3].strftime("%H:%M")) == ["09:30", "10:00", "11:00"]
    assert _assert_truncation_invariant(bars.iloc[-4000:]) >= 40


@pytest.mark.needs_data
def test_future_bars_do_not_leak_into_higher_timeframes():
    """Changing every bar after t (even within t's session and week) leaves row t unchanged."""
    bars = yf_bars("TSLA")
    full = compute_features(bars)
    for t in (2000, 2003, 3001, 4000):
        shocked = bars.copy()
        shocked.iloc[t + 1 :, :4] *= 1.5
        shocked.iloc[t + 1 :, 4] *= 3.0
        np.testing.assert_array_equal(compute_features(shocked).iloc[t].to_numpy(), full.iloc[t].to_numpy())


@pytest.mark.needs_data
def test_daily_features_use_the_previous_completed_session():
    """d1_* at any bar of session D come from sessions before D only: recomputed independently here."""
    bars = yf_bars("AAPL")
    feats = compute_features(bars)
    day = bars.index.tz_convert("America/New_York").date
    daily_close = bars["close"].groupby(day).last()
    e10 = daily_close.ewm(span=10, adjust=False, min_periods=10).mean()
    d1_trend_by_session = (daily_close / e10 - 1).shift(1)  # as of the session's start
    expected = d1_trend_by_session.reindex(day).to_numpy()
    np.testing.assert_allclose(feats["d1_trend"].to_numpy(), expected, rtol=1e-12, equal_nan=True)
    # and constant within each session
    assert (feats["d1_rsi"].groupby(day).nunique(dropna=False) == 1).all()


@pytest.mark.needs_data
def test_weekly_features_change_only_at_a_new_week():
    bars = yf_bars("AAPL")
    feats = compute_features(bars)
    local = bars.index.tz_convert("America/New_York")
    monday = (local.normalize() - pd.to_timedelta(local.day_of_week, unit="D")).date
    assert (feats["w1_trend"].groupby(monday).nunique(dropna=False) == 1).all()


@pytest.mark.needs_data
def test_h4_bars_split_sessions_at_13_30_on_both_grids():
    for bars in (yf_bars("AAPL").iloc[-700:], ibkr_bars().iloc[-700:]):
        feats = compute_features(bars)
        local = bars.index.tz_convert("America/New_York")
        bucket = (local.hour * 60 + local.minute >= 13 * 60 + 30).astype(int)
        key = pd.Series(local.date.astype(str)) + "/" + pd.Series(bucket).astype(str)
        per_bucket = feats["h4_rsi"].reset_index(drop=True).groupby(key).nunique(dropna=False)
        assert (per_bucket == 1).all()
        assert feats["h4_rsi"].nunique() > len(per_bucket) * 0.9  # and it does change between buckets


@pytest.mark.needs_data
def test_shape_names_and_no_nan_after_warmup():
    bars = yf_bars("TSLA")
    feats = compute_features(bars)
    assert list(feats.columns) == FEATURES and len(FEATURES) == 45
    assert feats.index.equals(bars.index)
    start = first_complete_row(feats)
    assert 0 < start < 1500  # weekly MACD signal warm-up: about 35 weeks
    assert np.isfinite(feats.iloc[start:].to_numpy()).all()
    assert set(np.unique(feats.iloc[start:][["strong_alignment", "weak_alignment", "all_macd_positive"]])) <= {0, 1}
    # MIN_HISTORY_WEEKS of bars are enough for a complete last row (what a live signal run must fetch)
    recent = bars[bars.index >= bars.index[-1] - pd.Timedelta(weeks=MIN_HISTORY_WEEKS)]
    assert not compute_features(recent).iloc[-1].isna().any()


# ------------------------------------------------------------------------------------------------------------
# agreement with the `ta` library (dev dependency)


@pytest.fixture(scope="module")
def aapl():
    return yf_bars("AAPL")


BURN_IN = 300  # bars; the RSI seed (ta: first change, here: Wilder's mean of 14) decays as (13/14)^k


@pytest.mark.needs_data
def test_rsi_matches_ta(aapl):
    ours = rsi_wilder(aapl["close"], 14)
    ref = ta.momentum.RSIIndicator(aapl["close"], window=14).rsi()
    np.testing.assert_allclose(ours.iloc[BURN_IN:], ref.iloc[BURN_IN:], atol=1e-6)
    feats = compute_features(aapl)
    np.testing.assert_allclose(feats["rsi_14"].iloc[BURN_IN:], ref.iloc[BURN_IN:], atol=1e-6)


@pytest.mark.needs_data
def test_macd_matches_ta(aapl):
    close = aapl["close"]
    ref = ta.trend.MACD(close, window_slow=26, window_fast=12, window_sign=9)
    line, sig, hist = macd(close)
    for ours, theirs in ((line, ref.macd()), (sig, ref.macd_signal()), (hist, ref.macd_diff())):
        np.testing.assert_allclose(ours.to_numpy(), theirs.to_numpy(), rtol=1e-9, atol=1e-9, equal_nan=True)
    feats = compute_features(aapl)
    np.testing.assert_allclose(
        (feats["macd"] * close).to_numpy(), ref.macd().to_numpy(), rtol=1e-9, atol=1e-9, equal_nan=True
    )


@pytest.mark.needs_data
def test_bollinger_matches_ta(aapl):
    close = aapl["close"]
    ref = ta.volatility.BollingerBands(close, window=20, window_dev=2)
    pctb, width = bollinger(close, 20, 2.0)
    np.testing.assert_allclose(pctb.to_numpy(), ref.bollinger_pband().to_numpy(), rtol=1e-9, atol=1e-9, equal_nan=True)
    np.testing.assert_allclose(
        (width * 100).to_numpy(), ref.bollinger_wband().to_numpy(), rtol=1e-9, atol=1e-9, equal_nan=True
    )


@pytest.mark.needs_data
def test_atr_matches_ta(aapl):
    ref = ta.volatility.AverageTrueRange(aapl["high"], aapl["low"], aapl["close"], window=14).average_true_range()
    ours = atr_wilder(aapl["high"], aapl["low"], aapl["close"], 14)
    # ta writes 0 (not NaN) during the warm-up
    np.testing.assert_allclose(ours.iloc[13:].to_numpy(), ref.iloc[13:].to_numpy(), rtol=1e-9)
    feats = compute_features(aapl)
    np.testing.assert_allclose((feats["atr_rel"] * aapl["close"]).iloc[13:], ref.iloc[13:], rtol=1e-9)


# ------------------------------------------------------------------------------------------------------------
# input validation


def _tiny() -> pd.DataFrame:
    idx = pd.date_range("2025-03-03 09:30", periods=7, freq="h", tz="America/New_York")
    c = np.linspace(100, 106, 7)
    return pd.DataFrame({"open": c, "high": c + 1, "low": c - 1, "close": c, "volume": 1000.0}, index=idx)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.assign(close=d["close"].where(d.index != d.index[3])), "NaN"),
        (lambda d: d.assign(low=d["low"].where(d.index != d.index[2], 0.0)), "non-positive"),
        (lambda d: d.assign(open=d["open"].where(d.index != d.index[2], -5.0)), "non-positive"),
        (lambda d: d.assign(volume=d["volume"].where(d.index != d.index[2], -1.0)), "negative"),
        (lambda d: d.iloc[[0, 1, 1, 2]], "duplicated"),
        (lambda d: d.iloc[[0, 2, 1, 3]], "out of order"),
        (lambda d: d.tz_localize(None), "timezone-naive"),
        (lambda d: d.drop(columns="volume"), "missing column"),
        (lambda d: d.reset_index(drop=True), "DatetimeIndex"),
        (lambda d: d.iloc[:0], "empty"),
        (lambda d: d.assign(high=d["low"] - 0.5), "high below low"),
    ],
)
def test_bad_input_raises_a_clear_error(mutate, message):
    with pytest.raises(FeatureInputError, match=message):
        compute_features(mutate(_tiny()))


def test_zero_volume_and_flat_prices_are_valid():
    idx = pd.date_range("2025-03-03 09:30", periods=60, freq="h", tz="America/New_York")
    bars = pd.DataFrame({c: 100.0 for c in ["open", "high", "low", "close"]} | {"volume": 0.0}, index=idx)
    feats = compute_features(bars)
    assert feats["rsi_14"].iloc[-1] == 50.0 and feats["rel_volume"].iloc[-1] == 1.0
    assert feats["bb_pctb"].iloc[-1] == 0.5


@pytest.mark.needs_data
def test_speed_one_symbol():
    """Target: 100 symbols x 2 years of hourly bars in <= 10 s, i.e. about 0.1 s a symbol."""
    bars = yf_bars("AAPL").iloc[-3500:]  # about 2 years
    compute_features(bars)
    t0 = time.perf_counter()
    for _ in range(5):
        compute_features(bars)
    per_symbol = (time.perf_counter() - t0) / 5
    assert per_symbol < 0.1, f"{per_symbol:.3f} s per symbol"
