"""Bad bars: NaN, zero or negative prices, duplicated or out-of-order timestamps, a last bar too old for the
`as_of`, a missing VIX. Each gets a clear error naming what is wrong (or its documented fallback), no order is
ever sized from bad data, and the journal says why nothing was done.

Unit level: the real reading and decision paths (core/bars.py, core/strategies/ema.py, core/features.py, the
broker's bars). Flow level: `ema-entry` as a real Prefect flow run against the paper exchange, serving bars from a
damaged copy of the data folder (built in tmp_path from the real CSVs, a few rows altered) or with a bad value
in what it answers (the exchange refuses to load NaN or non-positive prices from a file).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from prefect.states import StateType

from core.bars import BarsError, read_bars_csv
from core.calendar import NY
from core.features import FeatureInputError, compute_features
from core.ib_broker import IBBroker
from core.journal import Journal
from core.paper_exchange import AdminClient
from core.paper_exchange.market_data import MarketData
from core.settings import get_settings
from core.strategies.ema import (
    EmaParams,
    VixInfo,
    choose_leverage,
    decide_before_close,
    ema_series,
    init_ema_state,
    official_close,
)
from flows.ema_entry import ema_entry
from tests.broker_support import require_data
from tests.fault_support import damaged_data_dir, serve_altered_history, start_exchange
from tests.mtf_support import model_templates, models  # noqa: F401


ENTRY = datetime(2026, 3, 2, 15, 55, tzinfo=NY)
PREVIOUS = date(2026, 2, 27)


def journal() -> Journal:
    return Journal(get_settings().journal_path)


# --------------------------------------------------------------------------------------------------------------
# unit level: reading bars files

DAMAGE = {
    # name: (edit of the real 5m SMH rows, what the error says)
    "NaN close": (lambda f: f.assign(close=f["close"].where(f.index != 100, np.nan)), "NaN or non-positive price"),
    "zero open": (lambda f: f.assign(open=f["open"].where(f.index != 100, 0.0)), "NaN or non-positive price"),
    "negative low": (lambda f: f.assign(low=f["low"].where(f.index != 100, -1.0)), "NaN or non-positive price"),
    "duplicated timestamp": (lambda f: pd.concat([f.iloc[:101], f.iloc[100:]], ignore_index=True),
                             "duplicate timestamp"),
    "out-of-order timestamps": (lambda f: pd.concat([f.iloc[:100], f.iloc[[101, 100]], f.iloc[102:]],
                                                    ignore_index=True), "out of order"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_bars_file_is_refused_naming_file_and_row(tmp_path, damage):
    real = require_data()
    edit, says = DAMAGE[damage]
    bars = damaged_data_dir(real, tmp_path / "bars", {"5m/SMH.csv": edit})
    stamp = pd.read_csv(real / "5m" / "SMH.csv", dtype={"timestamp": str})["timestamp"][100]
    with pytest.raises(BarsError, match=says) as err:
        read_bars_csv(bars / "5m" / "SMH.csv")
    assert "5m/SMH.csv" in str(err.value)
    assert pd.Timestamp(stamp).strftime("%Y-%m-%d %H:%M") in str(err.value)  # the first bad row
    with pytest.raises(BarsError, match=says):  # the paper exchange reads its bars the same way: never serves them
        MarketData(bars).get("SMH")


# --------------------------------------------------------------------------------------------------------------
# unit level: the EMA rules and the features refuse bad values, or fall back as documented


def _closes(n: int = 300) -> list[tuple[date, float]]:
    start = date(2024, 1, 1)
    return [(start + timedelta(days=i), 100.0 + 0.1 * i) for i in range(n)]


@pytest.mark.parametrize("bad", [float("nan"), 0.0, -5.0, float("inf")])
def test_ema_rules_refuse_a_bad_close_or_price(bad):
    closes = _closes()
    with pytest.raises(ValueError, match="close #150"):
        ema_series([c for _, c in closes[:150]] + [bad] + [c for _, c in closes[151:]], 25)
    damaged = closes[:150] + [(closes[150][0], bad)] + closes[151:]
    with pytest.raises(ValueError, match=f"session {closes[150][0]}"):
        init_ema_state(damaged)
    state = init_ema_state(closes)
    with pytest.raises(ValueError, match="price"):
        decide_before_close(state, bad, 0, 1_000_000.0, 4_000_000.0, VixInfo(current=15.0),
                            session=closes[-1][0] + timedelta(days=1))
    with pytest.raises(ValueError, match="net_liquidation"):
        decide_before_close(state, 130.0, 0, bad, 4_000_000.0, VixInfo(current=15.0),
                            session=closes[-1][0] + timedelta(days=1))


def test_ema_rules_refuse_duplicated_or_out_of_order_sessions():
    closes = _closes()
    with pytest.raises(ValueError, match=f"duplicate session {closes[200][0]}"):
        init_ema_state(closes[:201] + closes[200:])
    with pytest.raises(ValueError, match=f"out-of-order session {closes[200][0]}"):
        init_ema_state(closes[:200] + [closes[201], closes[200]] + closes[202:])


@pytest.mark.parametrize("vix", [VixInfo(), VixInfo(current=float("nan"), last_close=0.0),
                                 VixInfo(current=-1.0, last_close=float("inf"))])
def test_a_missing_or_bad_vix_falls_back_to_the_default_leverage_and_says_why(vix):
    lev = choose_leverage(vix)
    assert lev.leverage == EmaParams().default_leverage == 3.0 and lev.source == "default" and lev.vix_used is None
    assert lev.reason.startswith("VIX unavailable")
    assert choose_leverage(VixInfo(current=float("nan"), last_close=12.5)).leverage == 3.5  # its latest close


def test_a_daily_bar_with_a_bad_close_is_never_final():
    close = datetime(2026, 3, 2, 16, 0, tzinfo=NY)
    idx = pd.DatetimeIndex([pd.Timestamp("2026-03-02", tz=NY)], name="timestamp")
    for bad in (float("nan"), 0.0, -1.0):
        bars = pd.DataFrame({"open": [1.0], "high": [1.0], "low": [1.0], "close": [bad], "volume": [1.0]}, idx)
        got = official_close(bars, close.date(), close, close + timedelta(minutes=10))
        assert not got.final and got.close is None and "no usable close" in got.reason


@pytest.mark.parametrize("damage", ["NaN", "zero", "negative", "duplicated", "out of order"])
def test_the_features_refuse_bad_hourly_bars(damage):
    from core.bars import load_hourly_bars

    bars = load_hourly_bars(require_data(), "AAPL").iloc[:600].copy()
    at = bars.index[300]
    if damage == "NaN":
        bars.loc[at, "close"] = np.nan
    elif damage == "zero":
        bars.loc[at, "open"] = 0.0
    elif damage == "negative":
        bars.loc[at, "low"] = -1.0
    elif damage == "duplicated":
        bars = pd.concat([bars.iloc[:301], bars.iloc[300:]])
    else:
        bars = pd.concat([bars.iloc[:300], bars.iloc[[301, 300]], bars.iloc[302:]])
    with pytest.raises(FeatureInputError) as err:
        compute_features(bars)
    assert str(at) in str(err.value) or str(bars.index[301]) in str(err.value)


def test_the_broker_returns_ascending_unique_bars_when_the_source_repeats_or_swaps_some(exchange, monkeypatch):
    """core.broker's documented shape (ascending, unique; a repeated bar: the one served last wins), whatever
    order the bars came in."""
    def repeat_and_swap(bars):
        bars = list(bars)
        bars[-3], bars[-2] = bars[-2], bars[-3]
        changed = bars[-4][:5] + (bars[-4][5] + 1.0,) + bars[-4][6:]
        return bars[:-3] + [changed] + bars[-3:]  # the session before is served again, with another close

    with IBBroker(client_id=97, settings=get_settings()) as broker:
        clean = broker.historical_bars("SMH", "1 day", "10 D")
        serve_altered_history(exchange, monkeypatch, "SMH", "1 day", repeat_and_swap)
        served = broker.historical_bars("SMH", "1 day", "10 D")
    assert served.index.is_monotonic_increasing and served.index.is_unique
    assert list(served.index) == list(clean.index)
    assert served["close"].iloc[-4] == clean["close"].iloc[-4] + 1.0  # the repeat served last
    assert (served.drop(served.index[-4]) == clean.drop(clean.index[-4])).all().all()


# --------------------------------------------------------------------------------------------------------------
# flow level: ema-entry never sizes an order from bad bars, and the journal says why


def nothing_decided_and_why(ex, says: str) -> str:
    """The run failed before deciding: no order at the exchange or in the journal, no decision, no EMA state;
    the journal's 'failed' row says why (returned)."""
    j = journal()
    assert not ex.engine.orders
    for table in ("orders", "signals", "ema_state", "executions"):
        assert j.query(f"SELECT count(*) AS n FROM {table}")["n"][0] == 0, table
    events = j.query("SELECT event, outcome FROM flow_events ORDER BY recorded_at")
    assert list(events["event"]) == ["started", "failed"]
    assert says in events["outcome"][1], events["outcome"][1]
    return events["outcome"][1]


def test_the_previous_sessions_bar_missing_means_no_decision(tmp_path, state_dir, prefect_harness, monkeypatch):
    """A damaged data folder whose SMH bars stop a session early: the last daily bar is too old for the as_of."""
    real = require_data()
    gone = PREVIOUS.isoformat()
    bars = damaged_data_dir(real, tmp_path / "bars", {
        "5m/SMH.csv": lambda f: f[~f["timestamp"].str.startswith(gone)],
        "daily/SMH.csv": lambda f: f[f["timestamp"] != gone],
    })
    ex = start_exchange(bars, ENTRY, tmp_path, monkeypatch)
    try:
        state = ema_entry(as_of=ENTRY, return_state=True)
        assert state.type == StateType.FAILED
        outcome = nothing_decided_and_why(ex, "HalfKnownStateError")
        assert "end at 2026-02-26, not at the previous session 2026-02-27" in outcome
    finally:
        ex.stop()


@pytest.mark.parametrize("bad", [0.0, -406.0])
def test_a_bad_close_in_the_served_history_means_no_decision(exchange, prefect_harness, monkeypatch, bad):
    """A zero or negative close among the daily bars the broker serves (NaN cannot travel over the TWS protocol
    the exchange speaks; the unit tests above cover it)."""
    AdminClient(exchange.admin_port).set_clock(ENTRY)
    day = date(2025, 11, 3)

    def damage(bars):
        return [b[:5] + (bad,) + b[6:] if b[1] == int(day.strftime("%Y%m%d")) else b for b in bars]

    serve_altered_history(exchange, monkeypatch, "SMH", "1 day", damage)
    state = ema_entry(as_of=ENTRY, return_state=True)
    assert state.type == StateType.FAILED
    outcome = nothing_decided_and_why(exchange, "HalfKnownStateError")
    assert str(day) in outcome and "close" in outcome


def test_no_smh_price_means_no_decision(exchange, prefect_harness):
    admin = AdminClient(exchange.admin_port)
    admin.set_clock(ENTRY)
    admin.no_data("SMH", quotes=True, history=False)
    state = ema_entry(as_of=ENTRY, return_state=True)
    assert state.type == StateType.FAILED
    j = journal()
    outcome = j.query("SELECT outcome FROM flow_events WHERE event = 'failed'")["outcome"][0]
    assert "SMH" in outcome and "354" in outcome
    assert not exchange.engine.orders and j.query("SELECT count(*) AS n FROM signals")["n"][0] == 0


def test_mtf_signal_never_sizes_from_bad_hourly_bars(exchange, prefect_harness, monkeypatch,
                                                    models):  # noqa: F811
    """A zero close in the hourly bars the broker serves for AAPL: nothing is stored, AAPL's decision is NO_TRADE
    saying why (its P(up) would have bought it), TSLA is decided as usual."""
    from core.bar_store import BarStore, store_root
    from flows.mtf_signal import mtf_signal

    models.champion("AAPL", 0.9)
    models.champion("TSLA", 0.9)
    at = datetime(2026, 3, 2, 10, 5, tzinfo=NY)
    AdminClient(exchange.admin_port).set_clock(at)
    bad_day = 20260225

    def damage(bars):
        return [b[:5] + (0.0,) + b[6:] if b[1] == bad_day else b for b in bars]

    serve_altered_history(exchange, monkeypatch, "AAPL", "1 hour", damage)
    out = mtf_signal(as_of=at)
    by = {r["symbol"]: r for r in out["decisions"]}
    assert by["AAPL"]["decision"] == "NO_TRADE" and "bad bars from the broker" in by["AAPL"]["reason"]
    assert "non-positive price" in by["AAPL"]["reason"]
    assert by["TSLA"]["decision"] == "BUY"
    assert [o.symbol for o in exchange.engine.orders.values()] == ["TSLA"]
    row = journal().query("SELECT probability, order_ref, reason FROM signals WHERE symbol = 'AAPL'").iloc[0]
    assert pd.isna(row["probability"]) and row["order_ref"] is None and "bad bars" in row["reason"]
    assert not BarStore(store_root(get_settings().state_dir)).path("AAPL").exists()
