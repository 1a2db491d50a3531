"""The EMA 25/125 rules of strategies.md as pure functions: hand-computed cases and boundaries."""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest

from core.costs import ib_fixed_commission
from core.strategies.ema import (
    Action,
    EmaParams,
    EmaState,
    Signal,
    VixInfo,
    choose_leverage,
    close_update,
    daily_stop_hit,
    decide_before_close,
    ema_alpha,
    ema_series,
    ema_step,
    init_ema_state,
    leverage_for_vix,
    next_open_exit,
    official_close,
    position_size,
    provisional,
    second_line_check,
    signal_of,
    stop_fill_price,
    stop_order_price,
    stop_price,
    target_shares,
)

D0 = date(2020, 1, 1)


def sessions(n: int, start: date = D0) -> list[date]:
    return [start + timedelta(days=i) for i in range(n)]


def closes_series(values) -> pd.Series:
    return pd.Series(list(values), index=pd.DatetimeIndex(sessions(len(values))), dtype=float)


def ready_state(ema_fast: float, ema_slow: float, session: date = D0, count: int = 300) -> EmaState:
    return EmaState(session=session, ema_fast=ema_fast, ema_slow=ema_slow, count=count)


# --- EMA arithmetic ---------------------------------------------------------------------------------------------


def test_alpha_is_two_over_n_plus_one():
    assert ema_alpha(25) == pytest.approx(2 / 26)
    assert ema_alpha(125) == pytest.approx(2 / 126)
    with pytest.raises(ValueError, match="span"):
        ema_alpha(0)


def test_ema_step_hand_computed():
    # n = 3 -> a = 0.5: 10 + 0.5 * (14 - 10) = 12
    assert ema_step(10.0, 14.0, 3) == 12.0
    # n = 25 -> a = 1/13: 100 + (113 - 100) / 13 = 101
    assert ema_step(100.0, 113.0, 25) == pytest.approx(101.0, abs=1e-12)
    # n = 125 -> a = 1/63: 200 - 63 / 63 = 199
    assert ema_step(200.0, 137.0, 125) == pytest.approx(199.0, abs=1e-12)


@pytest.mark.parametrize("bad", [float("nan"), 0.0, -1.0, float("inf"), None, "x"])
def test_ema_step_refuses_bad_close_naming_it(bad):
    with pytest.raises(ValueError, match="close"):
        ema_step(100.0, bad, 25)


def test_ema_series_seeded_with_first_close_equals_pandas():
    rng = np.random.default_rng(7)
    closes = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, 600)))
    for n in (3, 25, 125):
        ours = np.array(ema_series(closes, n))
        ref = pd.Series(closes).ewm(span=n, adjust=False).mean().to_numpy()
        assert ours[0] == closes[0]
        np.testing.assert_allclose(ours, ref, rtol=1e-12)


def test_init_refuses_short_history_with_clear_error():
    with pytest.raises(ValueError, match=r"249 sessions.*at least 250"):
        init_ema_state(closes_series(np.linspace(10, 20, 249)), min_history=250)
    state = init_ema_state(closes_series(np.linspace(10, 20, 250)), min_history=250)
    assert state.count == 250


def test_init_equals_pandas_ewm_last_row():
    rng = np.random.default_rng(1)
    values = 50 * np.exp(np.cumsum(rng.normal(0, 0.015, 400)))
    state = init_ema_state(closes_series(values), fast=25, slow=125, min_history=250)
    s = pd.Series(values)
    assert state.ema_fast == pytest.approx(s.ewm(span=25, adjust=False).mean().iloc[-1], rel=1e-12)
    assert state.ema_slow == pytest.approx(s.ewm(span=125, adjust=False).mean().iloc[-1], rel=1e-12)
    assert state.session == sessions(400)[-1]
    assert state.count == 400


def test_init_refuses_nan_and_unsorted_history():
    values = list(np.linspace(10, 20, 260))
    values[100] = float("nan")
    with pytest.raises(ValueError, match="close"):
        init_ema_state(closes_series(values))
    s = closes_series(np.linspace(10, 20, 260))
    s = s.iloc[::-1]
    with pytest.raises(ValueError, match="out-of-order"):
        init_ema_state(s)


# --- State --------------------------------------------------------------------------------------------------------


def test_update_refuses_duplicate_out_of_order_and_bad_close():
    st = ready_state(100.0, 90.0, session=date(2024, 5, 10))
    with pytest.raises(ValueError, match="duplicate session 2024-05-10"):
        st.update(date(2024, 5, 10), 101.0)
    with pytest.raises(ValueError, match="out-of-order session 2024-05-09"):
        st.update(date(2024, 5, 9), 101.0)
    for bad in (float("nan"), 0.0, -5.0):
        with pytest.raises(ValueError, match="close"):
            st.update(date(2024, 5, 13), bad)
    nxt = st.update(date(2024, 5, 13), 113.0)
    assert nxt.ema_fast == pytest.approx(101.0)
    assert nxt.count == st.count + 1 and nxt.session == date(2024, 5, 13)
    assert st.ema_fast == 100.0  # the old state is unchanged


@pytest.mark.parametrize("seed", range(20))
def test_state_after_daily_updates_equals_full_recomputation(seed):
    """Property: init over k closes, then fold the rest day by day == recomputation over all closes."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(250, 700))
    values = 10 ** rng.uniform(0, 3) * np.exp(np.cumsum(rng.normal(0, rng.uniform(0.001, 0.05), n)))
    days = sessions(n, start=D0 + timedelta(days=int(rng.integers(0, 5000))))
    k = int(rng.integers(250, n + 1))
    state = init_ema_state(pd.Series(values[:k], index=pd.DatetimeIndex(days[:k])))
    for d, c in zip(days[k:], values[k:], strict=True):
        state = state.update(d, float(c))
    full = init_ema_state(pd.Series(values, index=pd.DatetimeIndex(days)))
    assert state == full  # the same arithmetic, so exactly equal
    assert state.ema_fast == ema_series(values, 25)[-1]
    assert state.ema_slow == ema_series(values, 125)[-1]
    ref = pd.Series(values)
    assert state.ema_slow == pytest.approx(ref.ewm(span=125, adjust=False).mean().iloc[-1], rel=1e-11)


def test_provisional_does_not_mutate_and_matches_update():
    st = ready_state(100.0, 100.5)
    prov = provisional(st, 113.0)
    assert prov.ema_fast == pytest.approx(101.0)
    assert prov.ema_slow == pytest.approx(100.5 + (113.0 - 100.5) / 63)
    assert prov.signal is Signal.BULL  # 101 > 100.698
    assert st.ema_fast == 100.0 and st.count == 300
    upd = st.update(date(2020, 1, 2), 113.0)
    assert (upd.ema_fast, upd.ema_slow) == (prov.ema_fast, prov.ema_slow)
    with pytest.raises(ValueError, match="price"):
        provisional(st, float("nan"))


def test_signal_equal_emas_is_bear():
    assert signal_of(10.0, 9.99) is Signal.BULL
    assert signal_of(10.0, 10.0) is Signal.BEAR
    assert signal_of(9.0, 10.0) is Signal.BEAR


# --- Leverage -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vix", "lev"),
    [(9.0, 3.75), (11.99, 3.75), (12.0, 3.5), (12.99, 3.5), (13.0, 3.25), (13.99, 3.25), (14.0, 3.0), (40.0, 3.0)],
)
def test_leverage_table_boundaries(vix, lev):
    assert leverage_for_vix(vix) == lev


def test_leverage_fallbacks_and_reasons():
    c = choose_leverage(VixInfo(current=12.5, last_close=20.0))
    assert (c.leverage, c.source, c.vix_used) == (3.5, "current", 12.5)
    for missing in (None, float("nan"), 0.0, -3.0):
        c = choose_leverage(VixInfo(current=missing, last_close=11.0, last_close_session=date(2024, 1, 2)))
        assert (c.leverage, c.source, c.vix_used) == (3.75, "last_close", 11.0)
        assert "2024-01-02" in c.reason and "unavailable" in c.reason
    c = choose_leverage(VixInfo(current=float("nan"), last_close=None))
    assert (c.leverage, c.source, c.vix_used) == (3.0, "default", None)
    assert "VIX unavailable" in c.reason
    with pytest.raises(ValueError, match="vix"):
        leverage_for_vix(float("nan"))


def test_leverage_table_from_params():
    params = EmaParams(vix_table=((20.0, 2.0),), default_leverage=1.0)
    assert choose_leverage(VixInfo(current=19.9), params.vix_table, params.default_leverage).leverage == 2.0
    assert choose_leverage(VixInfo(current=20.0), params.vix_table, params.default_leverage).leverage == 1.0


# --- Sizing, stop, commission --------------------------------------------------------------------------------------


def test_position_size_floor_and_sized_down_to_funds():
    # floor(1,000,000 * 3.0 / 301) = 9966
    assert target_shares(1_000_000, 3.0, 301.0) == 9966
    assert position_size(1_000_000, 3.0, 301.0, available_funds=10_000_000) == 9966
    # funds allow floor(2,000,000 / 301) = 6644 < 9966: sized down
    assert position_size(1_000_000, 3.0, 301.0, available_funds=2_000_000) == 6644
    # never sized up above the target
    assert position_size(1_000, 1.0, 301.0, available_funds=1e9) == 3
    # funds below one share, or a margin deficit: 0 shares -> no order
    assert position_size(1_000_000, 3.0, 301.0, available_funds=300.99) == 0
    assert position_size(1_000_000, 3.0, 301.0, available_funds=-5_000) == 0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"net_liquidation": float("nan")}, "net_liquidation"),
        ({"net_liquidation": 0.0}, "net_liquidation"),
        ({"price": 0.0}, "price"),
        ({"price": -1.0}, "price"),
        ({"leverage": float("nan")}, "leverage"),
        ({"available_funds": float("nan")}, "available_funds"),
    ],
)
def test_position_size_validates_naming_input(kwargs, name):
    args = {"net_liquidation": 1e6, "leverage": 3.0, "price": 100.0, "available_funds": 1e7} | kwargs
    with pytest.raises(ValueError, match=name):
        position_size(**args)


def test_stop_price_formula():
    # P_stop = P_ref - 0.02 * E0 / q = 300 - 0.02 * 1,000,000 / 10,000 = 298
    assert stop_price(300.0, 1_000_000.0, 10_000) == pytest.approx(298.0)
    assert stop_price(300.0, 1_000_000.0, 10_000, stop_fraction=0.05) == pytest.approx(295.0)
    # consistency with the equity check: at P_stop equity is exactly 0.98 E0
    e0, q, p_ref = 1_000_000.0, 9_966, 301.0
    cash = e0 - q * p_ref
    ps = stop_price(p_ref, e0, q)
    assert cash + q * ps == pytest.approx(0.98 * e0)
    assert daily_stop_hit(cash + q * ps, e0)
    assert not daily_stop_hit(cash + q * (ps + 0.01), e0)
    with pytest.raises(ValueError, match="qty"):
        stop_price(300.0, 1e6, 0)
    with pytest.raises(ValueError, match="e0"):
        stop_price(300.0, float("nan"), 10)
    with pytest.raises(ValueError, match="p_ref"):
        stop_price(0.0, 1e6, 10)


def test_daily_stop_hit_boundary():
    assert daily_stop_hit(980_000.0, 1_000_000.0)
    assert daily_stop_hit(979_999.99, 1_000_000.0)
    assert not daily_stop_hit(980_000.01, 1_000_000.0)
    with pytest.raises(ValueError, match="equity"):
        daily_stop_hit(float("nan"), 1e6)


def test_stop_fill_at_min_of_open_and_stop_price():
    # the low reaches the stop: fill at the stop price
    assert stop_fill_price(open_=300.0, low=297.0, p_stop=298.0) == 298.0
    # gap down through the stop: fill at the open
    assert stop_fill_price(open_=290.0, low=285.0, p_stop=298.0) == 290.0
    # low exactly at the stop triggers; above does not
    assert stop_fill_price(open_=300.0, low=298.0, p_stop=298.0) == 298.0
    assert stop_fill_price(open_=300.0, low=298.01, p_stop=298.0) is None
    # an unreachable stop (<= 0)
    assert stop_fill_price(open_=300.0, low=1.0, p_stop=-5.0) is None


def test_commission_ib_fixed_min_and_max():
    assert ib_fixed_commission(10_000, 300.0) == pytest.approx(50.0)  # 0.005 a share
    assert ib_fixed_commission(100, 50.0) == pytest.approx(1.0)  # 0.50 -> minimum 1.00
    assert ib_fixed_commission(-100, 50.0) == pytest.approx(1.0)  # a sell costs the same
    assert ib_fixed_commission(1, 50.0) == pytest.approx(0.50)  # cap 1 % of 50 USD beats the minimum
    assert ib_fixed_commission(100_000, 0.20) == pytest.approx(200.0)  # 500 -> cap 1 % of 20,000
    with pytest.raises(ValueError, match="shares"):
        ib_fixed_commission(0, 50.0)
    with pytest.raises(ValueError, match="price"):
        ib_fixed_commission(10, float("nan"))
    with pytest.raises(ValueError, match="shares"):
        ib_fixed_commission(1.5, 50.0)


# --- Decisions ----------------------------------------------------------------------------------------------------


def test_decide_buy_when_bull_and_flat_journals_inputs():
    st = ready_state(100.0, 99.0, session=date(2024, 3, 1))
    d = decide_before_close(st, 101.0, 0, 1_000_000.0, 4_000_000.0, VixInfo(current=12.5), session=date(2024, 3, 4))
    assert d.action is Action.BUY and d.signal is Signal.BULL
    assert d.leverage == 3.5 and d.vix_source == "current"
    assert d.shares == math.floor(1_000_000 * 3.5 / 101.0) == d.target_shares
    assert d.ema_fast == pytest.approx(100.0 + (101.0 - 100.0) * 2 / 26)
    rec = d.as_record()
    assert rec["action"] == "BUY" and rec["signal"] == "BULL" and rec["ema_fast_prev"] == 100.0
    assert rec["leverage_reason"].startswith("VIX 12.50 (current)")


def test_decide_sized_down_and_no_trade():
    st = ready_state(100.0, 99.0)
    d = decide_before_close(st, 100.0, 0, 1_000_000.0, 1_500_000.0, VixInfo(current=20.0))
    assert d.action is Action.BUY and d.shares == 15_000 and d.target_shares == 30_000
    assert "sized down" in d.reason
    d = decide_before_close(st, 100.0, 0, 1_000_000.0, 50.0, VixInfo(current=20.0))
    assert d.action is Action.NO_TRADE and d.shares == 0


def test_decide_sell_hold():
    bear = ready_state(99.0, 100.0)
    d = decide_before_close(bear, 98.0, 500, 1e6, 1e6, VixInfo())
    assert (d.action, d.shares, d.signal) == (Action.SELL, 500, Signal.BEAR)
    assert d.leverage == 3.0 and d.vix_source == "default"
    assert decide_before_close(bear, 98.0, 0, 1e6, 1e6, VixInfo()).action is Action.HOLD
    bull = ready_state(100.0, 99.0)
    d = decide_before_close(bull, 101.0, 500, 1e6, 1e6, VixInfo(current=15.0))
    assert (d.action, d.shares) == (Action.HOLD, 0)


def test_decide_uses_provisional_not_final_signal():
    # final state BULL by a hair; a price far below flips the provisional signal to BEAR
    st = ready_state(100.0, 99.9)
    d = decide_before_close(st, 80.0, 100, 1e6, 1e6, VixInfo(current=15.0))
    assert d.signal is Signal.BEAR and d.action is Action.SELL


def test_decide_validates_inputs():
    st = ready_state(100.0, 99.0, session=date(2024, 3, 1))
    vix = VixInfo(current=15.0)
    with pytest.raises(ValueError, match="price"):
        decide_before_close(st, float("nan"), 0, 1e6, 1e6, vix)
    with pytest.raises(ValueError, match="net_liquidation"):
        decide_before_close(st, 100.0, 0, 0.0, 1e6, vix)
    with pytest.raises(ValueError, match="position_qty"):
        decide_before_close(st, 100.0, -10, 1e6, 1e6, vix)
    with pytest.raises(ValueError, match="available_funds"):
        decide_before_close(st, 100.0, 0, 1e6, float("nan"), vix)
    with pytest.raises(ValueError, match="not after"):
        decide_before_close(st, 100.0, 0, 1e6, 1e6, vix, session=date(2024, 3, 1))
    short = ready_state(100.0, 99.0, count=100)
    with pytest.raises(ValueError, match="too short"):
        decide_before_close(short, 100.0, 0, 1e6, 1e6, vix)


def test_close_update_bear_while_long_exits_next_open():
    st = ready_state(100.0, 99.9, session=date(2024, 3, 1))
    u = close_update(st, date(2024, 3, 4), 80.0, position_qty=100)
    assert u.signal is Signal.BEAR and u.exit_next_open
    assert u.state.session == date(2024, 3, 4)
    u = close_update(st, date(2024, 3, 4), 80.0, position_qty=0)
    assert u.signal is Signal.BEAR and not u.exit_next_open
    u = close_update(st, date(2024, 3, 4), 120.0, position_qty=100)
    assert u.signal is Signal.BULL and not u.exit_next_open


# --- Stop orders, the second line, the final close ---------------------------------------------------------------


def test_stop_order_price_rounds_up_to_the_cent_and_refuses_unreachable():
    assert stop_order_price(243.4671) == 243.47
    assert stop_order_price(243.47) == 243.47  # exact cents stay (no float creep to 243.48)
    assert stop_order_price(0.004) == 0.01
    assert stop_order_price(0.0) is None and stop_order_price(-5.0) is None
    with pytest.raises(ValueError, match="p_stop"):
        stop_order_price(float("nan"))


def test_second_line_held_position_uses_equity_against_e0():
    c = second_line_check(equity=980_000.0, e0=1_000_000.0, position_qty=100)
    assert c.hit and c.reference == "day_start" and c.threshold_equity == 980_000.0
    c = second_line_check(equity=980_000.01, e0=1_000_000.0, position_qty=100)
    assert not c.hit and "980,000.01" in c.reason
    assert second_line_check(equity=1.0, e0=1_000_000.0, position_qty=0).reference == "none"


def test_second_line_re_entered_position_uses_its_entry_stop():
    # stopped out earlier (equity below 0.98 E0), re-entered 10,000 shares at 100: its stop is 100 - 0.02e6/1e4 = 98
    c = second_line_check(equity=970_000.0, e0=1_000_000.0, position_qty=10_000, price=98.5, entry_price=100.0)
    assert not c.hit and c.reference == "entry" and c.threshold_price == pytest.approx(98.0)
    c = second_line_check(equity=965_000.0, e0=1_000_000.0, position_qty=10_000, price=98.0, entry_price=100.0)
    assert c.hit
    with pytest.raises(ValueError, match="price is required"):
        second_line_check(equity=1e6, e0=1e6, position_qty=10, entry_price=100.0)
    with pytest.raises(ValueError, match="position_qty"):
        second_line_check(equity=1e6, e0=1e6, position_qty=-1)


NY = ZoneInfo("America/New_York")


def _daily(rows: dict[str, float]) -> pd.DataFrame:
    idx = pd.DatetimeIndex([pd.Timestamp(d, tz=NY) for d in rows], name="timestamp")
    return pd.DataFrame({"close": list(rows.values())}, index=idx)


def test_official_close_needs_the_clock_past_close_plus_settle_and_the_bar():
    close = datetime(2025, 11, 28, 13, 0, tzinfo=NY)
    bars = _daily({"2025-11-26": 347.74, "2025-11-28": 352.5})
    early = official_close(bars, date(2025, 11, 28), close, close - timedelta(minutes=1), 0)
    assert not early.final and "before the close" in early.reason
    settling = official_close(bars, date(2025, 11, 28), close, close + timedelta(seconds=60), 120)
    assert not settling.final and "120 s" in settling.reason
    got = official_close(bars, date(2025, 11, 28), close, close + timedelta(seconds=120), 120)
    assert got.final and got.close == 352.5
    missing = official_close(bars.iloc[:1], date(2025, 11, 28), close, close, 0)
    assert not missing.final and "no daily bar for 2025-11-28" in missing.reason
    nan = official_close(_daily({"2025-11-28": float("nan")}), date(2025, 11, 28), close, close, 0)
    assert not nan.final and "no usable close" in nan.reason
    with pytest.raises(ValueError, match="aware"):
        official_close(bars, date(2025, 11, 28), close.replace(tzinfo=None), close, 0)


def test_next_open_exit_only_before_the_next_open():
    st = ready_state(100.0, 99.9, session=date(2025, 5, 20))
    upd = close_update(st, date(2025, 5, 21), 80.0, position_qty=100)
    nxt = datetime(2025, 5, 22, 9, 30, tzinfo=NY)
    send, reason = next_open_exit(upd, datetime(2025, 5, 21, 16, 5, tzinfo=NY), nxt)
    assert send and "2025-05-22" in reason
    send, reason = next_open_exit(upd, nxt, nxt)
    assert not send and "NOT sent" in reason
    flat = close_update(st, date(2025, 5, 21), 80.0, position_qty=0)
    assert next_open_exit(flat, datetime(2025, 5, 21, 16, 5, tzinfo=NY), nxt) == (False, flat.reason)


# --- House rules ----------------------------------------------------------------------------------------------------


def test_core_ema_modules_import_no_prefect_and_read_no_clock():
    """DESIGN.md: core/ never imports Prefect; time-dependent code takes `as_of` instead of reading the clock."""
    import subprocess
    import sys
    from pathlib import Path

    mods = ["core.strategies.ema", "core.costs", "core.backtest.ema", "core.backtest.metrics", "core.bars"]
    code = "import sys\n" + "".join(f"import {m}\n" for m in mods) + "print('prefect' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    root = Path(__file__).resolve().parents[1] / "core"
    files = [
        root / "strategies" / "ema.py",
        root / "costs.py",
        root / "validation.py",
        *(root / "backtest").glob("*.py"),
    ]
    for f in files:
        text = f.read_text(encoding="utf-8")
        for needle in ("datetime.now", "date.today", "time.time(", "perf_counter", "import prefect", "from prefect"):
            assert needle not in text, f"{f.name} contains {needle!r}"
