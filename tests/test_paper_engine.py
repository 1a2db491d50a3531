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
    assert (day.status, day.completed_at) == ("Cancelled", ts(D1, 11, 30)) and day in engine.pop_changed()
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


def make_engine(bars: Path, tmp_path: Path, account_type: str, cash: float = 100_000.0) -> Engine:
    return Engine(MarketData(bars), EngineConfig(initial_cash=cash, account_type=account_type),
                  tmp_path / f"{account_type}.json")


def test_reg_t_margin_rejects_beyond_4x_intraday_but_never_a_reduction(bars, tmp_path):
    engine = make_engine(bars, tmp_path, "reg_t_margin")
    with pytest.raises(OrderError) as exc:
        place(engine, ts(D1, 9, 30), qty=4_100)  # initial margin 25 % x 410k > 100k
    assert exc.value.code == 201
    assert "YOUR EQUITY WITH LOAN VALUE [" in exc.value.message and "MUST EXCEED THE INITIAL MARGIN [" in \
        exc.value.message
    place(engine, ts(D1, 9, 30), qty=3_900)
    engine.advance(ts(D1, 9, 30))
    v = engine.account_values(ts(D1, 9, 30))
    assert v["InitMarginReq"] == pytest.approx(0.25 * 390_000) and v["RegTMargin"] == pytest.approx(0.5 * 390_000)
    assert v["BuyingPower"] == pytest.approx(4 * (100_000 - 19.5 - 390_000 / 4))
    assert v["ExcessLiquidity"] == pytest.approx(100_000 - 19.5 - 0.25 * 390_000)
    place(engine, ts(D1, 9, 31), "SELL", 3_900, ref="out")  # reduces: always accepted


@pytest.mark.parametrize("account_type", ["reg_t_cash", "reg_t_margin", "portfolio_margin"])
def test_overnight_buying_power_by_account_type(bars, tmp_path, account_type):
    """After the 15:50 check, an opening order must meet the overnight requirement: cash 100 %, Reg T 50 %,
    Portfolio Margin 15 %. XYZ's last price is its 11:25 close, 123.25; 100k of equity."""
    engine = make_engine(bars, tmp_path, account_type)
    late = ts(D1, 15, 55)
    assert engine.overnight_in_force(late) and not engine.overnight_in_force(ts(D1, 15, 49))
    px = engine.price("XYZ", late)
    rate = {"reg_t_cash": 1.0, "reg_t_margin": 0.5, "portfolio_margin": 0.15}[account_type]
    fits = int(100_000 / (px * rate) * 0.995)
    impact = engine.what_if(symbol="XYZ", action="BUY", quantity=fits, order_type="MKT", lmt_price=None,
                            aux_price=None, tif="DAY", account="", now=late)
    assert impact.allowed and impact.init_after == pytest.approx(fits * px * rate)
    assert impact.init_before == 0 and impact.equity_before == 100_000
    too_many = int(100_000 / (px * rate) * 1.01)
    big = engine.what_if(symbol="XYZ", action="BUY", quantity=too_many, order_type="MKT", lmt_price=None,
                         aux_price=None, tif="DAY", account="", now=late)
    assert not big.allowed and "INITIAL MARGIN" in big.warning
    with pytest.raises(OrderError) as exc:
        place(engine, late, qty=too_many)
    assert exc.value.code == 201
    assert engine.orders == {}  # what-if placed nothing


def test_cash_account_refuses_shorts(bars, tmp_path):
    engine = make_engine(bars, tmp_path, "reg_t_cash")
    with pytest.raises(OrderError, match="SHORT SALES ARE NOT ALLOWED"):
        place(engine, ts(D1, 9, 30), "SELL", 10)


def test_a_reg_t_position_breaking_the_overnight_requirement_is_liquidated_at_the_close(bars, tmp_path):
    engine = make_engine(bars, tmp_path, "reg_t_margin")
    place(engine, ts(D1, 9, 30), qty=3_000)  # 300k: 3x, fine intraday (25 %), not overnight (50 % = 150k)
    engine.advance(ts(D1, 15, 0))
    fills = engine.advance(ts(D1, 16, 0))
    assert len(fills) == 1
    o, e = fills[0]
    assert e.liquidation and o.order_ref == "IB liquidation" and e.side == "SLD"
    v = engine.account_values(ts(D1, 16, 0))
    assert v["RegTMargin"] <= v["EquityWithLoanValue"]
    assert engine.advance(ts(D1, 16, 5)) == []  # once a session


def test_portfolio_margin_keeps_3x_overnight(bars, tmp_path):
    engine = make_engine(bars, tmp_path, "portfolio_margin")
    place(engine, ts(D1, 9, 30), qty=3_000)
    engine.advance(ts(D1, 15, 0))
    assert engine.advance(ts(D1, 16, 0)) == []
    assert engine.positions["XYZ"].quantity == 3_000


def link(e: Engine, now: int, action="SELL", qty=100.0, otype="LMT", lmt=None, aux=None, parent=0,
         transmit=True, oca="", oca_type=0, tif="GTC", ref="child"):
    return e.place(client_id=1, order_id=e.next_order_id, symbol="XYZ", action=action, quantity=qty,
                   order_type=otype, lmt_price=lmt, aux_price=aux, tif=tif, account="", order_ref=ref,
                   outside_rth=False, now=now, parent_id=parent, transmit=transmit, oca_group=oca,
                   oca_type=oca_type)


def test_bracket_children_wait_for_the_parent_fill_then_one_cancels_the_other(engine):
    t0 = ts(D1, 9, 32)  # mid-bar: the parent (BUY STP 104) works from 09:35 and fills at 09:50's open 104
    parent = link(engine, t0, "BUY", otype="STP", aux=104.0, transmit=False, ref="entry")
    take = link(engine, t0, lmt=110.0, parent=parent.order_id, transmit=False, ref="tp")
    stop = link(engine, t0, otype="STP", aux=95.0, parent=parent.order_id, transmit=False, ref="sl")
    engine.advance(t0)
    assert [o.status for o in (parent, take, stop)] == ["PreSubmitted"] * 3  # nothing transmitted yet
    assert not any(engine.is_working(o) for o in (parent, take, stop))
    last = link(engine, t0, "SELL", otype="LMT", lmt=130.0, parent=parent.order_id, transmit=True, ref="tp2")
    engine.advance(t0)
    assert parent.status == "Submitted" and {take.status, stop.status, last.status} == {"PreSubmitted"}
    fills = engine.advance(ts(D1, 9, 50))
    assert [(o.order_ref, e.price) for o, e in fills] == [("entry", 104.0)]
    assert {take.status, stop.status} == {"Submitted"}
    fills = engine.advance(ts(D1, 10, 20))  # 10:15's open is 109, the bar's high 109.5 ... 10:20 open 110
    assert [(o.order_ref, e.price) for o, e in fills] == [("tp", 110.0)]
    assert (stop.status, last.status) == ("Cancelled", "Cancelled")  # the bracket's OCA: reduced to 0
    assert engine.positions["XYZ"].quantity == 0


def test_cancelling_a_parent_cancels_its_children(engine):
    t0 = ts(D1, 9, 32)
    parent = link(engine, t0, "BUY", otype="LMT", lmt=50.0, transmit=False, ref="entry")
    child = link(engine, t0, otype="STP", aux=40.0, parent=parent.order_id, ref="sl")
    engine.cancel(1, parent.order_id, t0)
    assert child.status == "Cancelled" and "parent" in child.completed_status
    assert child in engine.pop_changed()


def test_a_child_needs_a_working_parent(engine):
    with pytest.raises(OrderError, match="parent order 77"):
        link(engine, ts(D1, 9, 30), lmt=120.0, parent=77)


@pytest.mark.parametrize("oca_type, other_qty, other_status", [(1, 100.0, "Cancelled"), (2, 70.0, "Submitted"),
                                                               (3, 70.0, "Submitted")])
def test_oca_group_cancels_or_reduces_the_others(engine, oca_type, other_qty, other_status):
    t0 = ts(D1, 9, 30)
    engine.faults.partial_fraction = 0.4
    a = link(engine, t0, "BUY", qty=100, otype="MKT", oca="g", oca_type=oca_type, ref="a")
    engine.advance(t0)  # a: 40 of 100 at 09:30's open
    b = link(engine, t0, "BUY", qty=100, otype="LMT", lmt=50.0, oca="g", oca_type=oca_type, ref="b")
    assert (a.filled, a.oca_group, a.oca_type) == (40, "g", oca_type)
    engine.faults.partial_fraction = 0.5
    engine.advance(ts(D1, 9, 35))  # a: 30 more, b reduced by it (types 2, 3) or cancelled (1)
    assert (b.quantity, b.status) == (other_qty, other_status)


@pytest.mark.parametrize("tif, lmt, status, filled", [("IOC", 103.0, "Filled", 100), ("IOC", 102.0, "Cancelled", 0),
                                                      ("FOK", 103.0, "Filled", 100)])
def test_ioc_and_fok_fill_at_once_or_never(engine, tif, lmt, status, filled):
    o = place(engine, ts(D1, 9, 47), otype="LMT", lmt=lmt, tif=tif)  # the 09:45 bar is in progress: open 103
    engine.advance(ts(D1, 9, 47))
    assert (o.status, o.filled) == (status, filled)
    engine.advance(ts(D1, 11, 0))  # never later
    assert o.filled == filled


def test_fok_with_a_partial_fill_fills_nothing(engine):
    engine.faults.partial_fraction = 0.5
    o = place(engine, ts(D1, 9, 47), otype="MKT", tif="FOK")
    engine.advance(ts(D1, 9, 47))
    assert (o.status, o.filled) == ("Cancelled", 0)


def test_opg_works_only_at_the_next_open(engine):
    o = place(engine, ts(D1, 10, 0), otype="LMT", lmt=99.0, tif="OPG", action="SELL")  # D2 opens at 100
    engine.advance(ts(D1, 11, 0))
    assert o.status == "Submitted" and o.filled == 0  # not today's bars
    engine.advance(ts(D2, 9, 30))
    assert (o.status, o.avg_fill_price) == ("Filled", 100.0)
    never = place(engine, ts(D2, 10, 0), otype="LMT", lmt=150.0, tif="OPG", action="SELL")
    engine.advance(ts(D2, 11, 0))
    assert never.status == "Submitted"  # waits for the next session's open


def test_gtd_expires_at_its_time(engine):
    o = engine.place(client_id=1, order_id=50, symbol="XYZ", action="BUY", quantity=10, order_type="LMT",
                     lmt_price=50.0, aux_price=None, tif="GTD", account="", order_ref="gtd", outside_rth=False,
                     now=ts(D1, 9, 30), good_till_date="20260302 10:30:00 America/New_York")
    engine.advance(ts(D1, 10, 29))
    assert o.status == "Submitted"
    engine.advance(ts(D1, 10, 31))
    assert (o.status, o.completed_at) == ("Cancelled", ts(D1, 10, 30))
    with pytest.raises(OrderError):
        place(engine, ts(D1, 9, 30), tif="GTD")  # no goodTillDate


@pytest.mark.parametrize("kw", [{"otype": "LMT", "lmt": -1.0}, {"otype": "LMT", "lmt": 100.005},
                                {"otype": "STP", "aux": 99.999}, {"otype": "LMT", "lmt": 0.0}])
def test_negative_zero_and_sub_tick_prices_are_error_110(engine, kw):
    with pytest.raises(OrderError) as exc:
        place(engine, ts(D1, 9, 30), **kw)
    assert exc.value.code == 110 and "minimum price variation" in exc.value.message


def test_unknown_tif_is_refused(engine):
    with pytest.raises(OrderError, match="time in force"):
        place(engine, ts(D1, 9, 30), tif="GTX")


def test_daily_pnl_of_a_position_bought_today(engine):
    place(engine, ts(D1, 9, 30), qty=100)
    engine.advance(ts(D1, 9, 30))  # 100 @ 100.0, 1.00 commission
    v = engine.pnl(ts(D1, 10, 0))  # last price 106 (the 10:00 open)
    assert v["daily"] == pytest.approx(100 * 6 - 1.0) and v["unrealized"] == pytest.approx(100 * (106 - 100.01))
    single = engine.pnl(ts(D1, 10, 0), "XYZ")
    assert (single["position"], single["value"]) == (100, 10_600)


def test_execution_filter_time(engine):
    place(engine, ts(D1, 9, 30), qty=1, ref="early")
    engine.advance(ts(D1, 9, 30))
    place(engine, ts(D1, 10, 0), qty=1, ref="late")
    engine.advance(ts(D1, 10, 0))
    assert [e.order_ref for e in engine.executions_on(ts(D1, 11, 0), since=ts(D1, 9, 45))] == ["late"]


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
