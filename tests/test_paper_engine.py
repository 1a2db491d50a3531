"""Unit tests of the paper exchange's parts on small synthetic bars (no shared data needed): market data
derivation, fill rules, commission, margin, the state file and the wire encoders' field counts."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from core.paper_exchange import protocol as P
from core.paper_exchange.engine import Engine, EngineConfig, OrderError, commission_for
from core.paper_exchange.market_data import BadRequestError, MarketData, UnknownSymbolError

NY = ZoneInfo("America/New_York")
D1, D2 = datetime(2026, 3, 2, tzinfo=NY), datetime(2026, 3, 3, tzinfo=NY)


def ts(day: datetime, h: int, m: int) -> int:
    return int(day.replace(hour=h, minute=m).timestamp())


@pytest.fixture
def bars(tmp_path: Path) -> Path:
    """XYZ: 5-minute bars 09:30-11:25 on two sessions (price walks 100, 101, ...), an hourly file and a daily
    file whose prices for those sessions differ (they must be ignored), and an older daily-only session."""
    for sub in ("5m", "1h", "daily"):
        (tmp_path / sub).mkdir()
    rows = ["timestamp,open,high,low,close,volume"]
    for day in (D1, D2):
        for k in range(24):
            t = day.replace(hour=9, minute=30) + timedelta(minutes=5 * k)
            o = 100.0 + k
            rows.append(f"{t.isoformat()},{o},{o + 0.5},{o - 0.5},{o + 0.25},{1000 + k}")
    (tmp_path / "5m" / "XYZ.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "1h" / "XYZ.csv").write_text("timestamp,open,high,low,close,volume\n"
                                             "2026-02-27T09:30:00-05:00,90,91,89,90.5,5\n"
                                             "2026-03-02T09:30:00-05:00,1,1,1,1,1\n")
    (tmp_path / "daily" / "XYZ.csv").write_text("timestamp,open,high,low,close,volume\n"
                                                "2026-02-26,80,81,79,80.5,7\n2026-02-27,90,91,89,90.5,5\n"
                                                "2026-03-02,2,2,2,2,2\n")
    return tmp_path


@pytest.fixture
def engine(bars: Path, tmp_path: Path) -> Engine:
    return Engine(MarketData(bars), EngineConfig(initial_cash=100_000.0), tmp_path / "state.json")


def place(e: Engine, now: int, action="BUY", qty=100.0, otype="MKT", lmt=None, aux=None, oid=None, ref="r",
          tif="DAY"):
    oid = oid or e.next_order_id
    return e.place(client_id=1, order_id=oid, symbol="XYZ", action=action, quantity=qty, order_type=otype,
                   lmt_price=lmt, aux_price=aux, tif=tif, account="", order_ref=ref, outside_rth=False, now=now)


# --- commission ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shares,price,fee", [(100, 50.0, 1.00), (1000, 50.0, 5.00), (10, 5.0, 0.50),
                                              (3000, 400.0, 15.00), (1, 50.0, 0.50)])
def test_commission_is_ib_fixed_pricing(shares, price, fee):
    assert commission_for(shares, price) == pytest.approx(fee)


# --- market data ------------------------------------------------------------------------------------------------


def test_hourly_and_daily_bars_are_derived_from_5min_bars(bars):
    md = MarketData(bars)
    h = md.history("XYZ", "1 hour", ts(D1, 12, 0), "1 D")
    assert [b[0] for b in h] == [ts(D1, 9, 30), ts(D1, 10, 30)]
    assert h[0][2:] == (100.0, 111.5, 99.5, 111.25, sum(1000 + k for k in range(12)))
    d = md.history("XYZ", "1 day", ts(D1, 16, 0), "3 D")
    assert [b[1] for b in d] == [20260226, 20260227, 20260302]
    assert d[-1][2:6] == (100.0, 123.5, 99.5, 123.25)  # from 5-minute bars, not the daily file's 2.0
    assert d[1][2:6] == (90.0, 91.0, 89.0, 90.5)  # no 5-minute bars that day: the file


def test_history_serves_a_partial_last_bar_and_nothing_after_the_end(bars):
    md = MarketData(bars)
    end = ts(D1, 9, 47)
    five = md.history("XYZ", "5 mins", end, "1 D")
    assert five[-1][0] == ts(D1, 9, 40)  # 09:45 bar has not ended
    day = md.history("XYZ", "1 day", end, "1 D")
    assert day == [(ts(D1, 9, 30), 20260302, 100.0, 102.5, 99.5, 102.25, 1000 + 1001 + 1002)]  # 3 bars ended
    assert md.history("XYZ", "5 mins", ts(D2, 9, 45), "600 S") == [
        (ts(D2, 9, 35), 20260303, 101.0, 101.5, 100.5, 101.25, 1001.0),
        (ts(D2, 9, 40), 20260303, 102.0, 102.5, 101.5, 102.25, 1002.0)]
    with pytest.raises(BadRequestError):
        md.history("XYZ", "2 mins", end, "1 D")
    with pytest.raises(BadRequestError):
        md.history("XYZ", "5 mins", end, "one day")
    with pytest.raises(UnknownSymbolError):
        md.history("NOPE", "5 mins", end, "1 D")


def test_prices_at_a_moment(bars):
    md = MarketData(bars)
    assert md.last_price("XYZ", ts(D1, 9, 30)) == 100.0  # open of the bar in progress
    assert md.last_price("XYZ", ts(D1, 9, 34)) == 100.0
    assert md.last_price("XYZ", ts(D1, 12, 0)) == 123.25  # after the last bar: its close
    assert md.previous_close("XYZ", ts(D2, 10, 0)) == 123.25
    assert md.last_price("XYZ", ts(datetime(2020, 1, 2, tzinfo=NY), 10, 0)) is None


# --- fill rules ---------------------------------------------------------------------------------------------------


def test_market_order_fills_at_the_open_of_the_first_bar_starting_at_or_after_the_clock(engine):
    o = place(engine, ts(D1, 9, 32))
    assert engine.advance(ts(D1, 9, 34)) == []
    [(order, ex)] = engine.advance(ts(D1, 9, 35))
    assert (ex.price, ex.time, order.status) == (101.0, ts(D1, 9, 35), "Filled")
    assert ex.commission == 1.0 and o.commission == 1.0
    assert engine.cash == pytest.approx(100_000 - 100 * 101.0 - 1.0)
    pos = engine.positions["XYZ"]
    assert (pos.quantity, pos.avg_cost) == (100, pytest.approx(101.01))


def test_limit_fills_at_a_better_open_or_at_the_limit_when_the_range_reaches_it(engine):
    a = place(engine, ts(D1, 9, 30), "BUY", 10, "LMT", lmt=105.0, ref="a")  # open 100 <= 105: the open
    b = place(engine, ts(D1, 9, 30), "SELL", 10, "LMT", lmt=103.3, ref="b")  # 09:45 bar high 103.5
    fills = engine.advance(ts(D1, 9, 49))
    assert [(o.order_ref, e.price, e.time) for o, e in fills] == [("a", 100.0, ts(D1, 9, 30))]
    fills = engine.advance(ts(D1, 9, 50))
    assert [(o.order_ref, e.price, e.time) for o, e in fills] == [("b", 103.3, ts(D1, 9, 50))]
    assert a.status == b.status == "Filled"


def test_stop_triggers_at_the_stop_or_at_a_gapped_open(engine):
    s1 = place(engine, ts(D1, 9, 30), "BUY", 10, "STP", aux=102.2, ref="s1")  # 09:40 bar high 102.5
    s2 = place(engine, ts(D1, 9, 30), "BUY", 10, "STP", aux=99.0, ref="s2")  # open 100 >= 99: the open
    fills = engine.advance(ts(D1, 10, 0))
    assert {o.order_ref: (e.price, e.time) for o, e in fills} == {"s1": (102.2, ts(D1, 9, 45)),
                                                                  "s2": (100.0, ts(D1, 9, 30))}
    assert s1.status == s2.status == "Filled"


def test_day_orders_expire_at_the_close_gtc_orders_keep_working(engine):
    day = place(engine, ts(D1, 10, 0), otype="LMT", lmt=50.0, ref="day")
    gtc = place(engine, ts(D1, 10, 0), otype="LMT", lmt=101.0, ref="gtc", tif="GTC")
    assert engine.advance(ts(D1, 11, 29)) == [] and day.is_open
    assert engine.advance(ts(D1, 11, 30)) == []  # the last 5-minute bar of the session ended 11:30
    assert (day.status, day.completed_at) == ("Cancelled", ts(D1, 11, 30)) and engine.pop_expired() == [day]
    [(o, e)] = engine.advance(ts(D2, 9, 30))  # next session opens at 100 <= 101
    assert (o.order_ref, e.price) == ("gtc", 100.0) and gtc.status == "Filled"


def test_partial_fill_fault_leaves_the_rest_working(engine):
    engine.faults.partial_fraction = 0.3
    o = place(engine, ts(D1, 9, 30), qty=100)
    [(_, e1)] = engine.advance(ts(D1, 9, 30))
    assert (e1.shares, o.status, o.remaining) == (30, "Submitted", 70)
    [(_, e2)] = engine.advance(ts(D1, 9, 35))
    assert (e2.shares, e2.price, o.status) == (70, 101.0, "Filled")
    assert e1.commission + e2.commission == pytest.approx(1.0)  # the minimum once per order


def test_margin_rejects_beyond_leverage_but_never_a_reduction(engine):
    with pytest.raises(OrderError) as exc:
        place(engine, ts(D1, 9, 30), qty=4_100)  # 410k > 4 x 100k
    assert exc.value.code == 201
    place(engine, ts(D1, 9, 30), qty=3_900)
    engine.advance(ts(D1, 9, 30))
    assert engine.account_values(ts(D1, 9, 30))["BuyingPower"] == pytest.approx(4 * (100_000 - 19.5 - 390_000 / 4))
    place(engine, ts(D1, 9, 31), "SELL", 3_900, ref="out")  # reduces: always accepted


def test_rejections_and_cancel(engine):
    for kw, code in [({"qty": 0.5}, 201), ({"otype": "TRAIL"}, 201), ({"otype": "LMT"}, 201),
                     ({"action": "HOLD"}, 201)]:
        with pytest.raises(OrderError) as exc:
            place(engine, ts(D1, 9, 30), **kw)
        assert exc.value.code == code
    o = place(engine, ts(D1, 9, 30), otype="LMT", lmt=50.0)
    assert engine.cancel(1, o.order_id, ts(D1, 9, 31)).status == "Cancelled"
    with pytest.raises(OrderError) as exc:
        engine.cancel(1, o.order_id, ts(D1, 9, 32))
    assert exc.value.code == 10148
    with pytest.raises(OrderError) as exc:
        engine.cancel(1, 999, ts(D1, 9, 32))
    assert exc.value.code == 10147


def test_state_file_restores_the_account(engine, bars, tmp_path):
    place(engine, ts(D1, 9, 30), qty=10, ref="keep")
    engine.advance(ts(D1, 9, 30))
    place(engine, ts(D1, 9, 31), otype="LMT", lmt=50.0, ref="rest")
    again = Engine(MarketData(bars), EngineConfig(initial_cash=1.0), tmp_path / "state.json")
    assert again.cash == engine.cash and again.positions == engine.positions
    assert [o.order_ref for o in again.open_orders()] == ["rest"]
    assert again.next_order_id == engine.next_order_id and again.executions == engine.executions
    assert [e.order_ref for e in again.executions_on(ts(D1, 15, 0))] == ["keep"]
    assert again.executions_on(ts(D2, 10, 0)) == []  # reqExecutions answers for the clock's day


# --- wire encoders ------------------------------------------------------------------------------------------------


def test_exact_field_counts():
    ins = P.Instrument("XYZ", 1)
    o = P.OrderView(1, 2, 3, "BUY", 10, "LMT", 1.0, None, "DAY", "DU1", "ref", False, "Submitted", 0, 0, 0)
    assert [len(P.open_order(sv, ins, o)) for sv in (157, 176)] == [120, 128]
    assert [len(P.completed_order(sv, ins, o)) for sv in (157, 176)] == [92, 97]
    e = P.ExecView("x", 1, 2, 3, "20260302 10:00:00 America/New_York", "DU1", "BOT", 1, 1.0, 1, 1.0, "r", 1.0, 0.0)
    assert len(P.exec_details(-1, ins, e)) == 31
    assert len(P.commission_report(e)) == 8
    assert len(P.position("DU1", ins, 1, 1.0)) == 16
    assert len(P.portfolio_value(ins, 1, 1.0, 1.0, 0.0, 0.0, "DU1")) == 20
    assert len(P.tick_price(1, 4, 1.0, 1)) == 7
    assert len(P.order_status(o)) == 12
    assert [len(P.error(sv, 1, 200, "x")) for sv in (157, 176)] == [5, 6]
