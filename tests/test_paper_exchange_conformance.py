"""Conformance: the real IB client library (ib_insync, or ib_async with TRADEFLOW_IB_LIBRARY=ib_async) and the
production IBBroker against the paper exchange, at server versions 157 and 176.

Any ERROR logged by the client's decoder (a message it silently dropped) fails the test.
`tests/ib_async_conformance.sh` runs this same module in a throwaway environment with ib_async 2.1.
"""

from __future__ import annotations

import csv
import time
from datetime import datetime, timedelta, timezone

import pytest

try:
    from tests.broker_support import NY, START, DecoderErrors, require_data, wait_until
except ImportError:  # tests/ is not a package: pytest put tests/ itself on sys.path
    from broker_support import NY, START, DecoderErrors, require_data, wait_until

from core.broker import (
    BrokerConnectionError,
    BrokerTimeoutError,
    IBError,
    LiveTradingRefusedError,
    OrderNotFilledError,
    OrderRejectedError,
    OrderRequest,
    UnknownContractError,
)
from core.ib_broker import IB_LIBRARY, IBBroker, ibapi
from core.paper_exchange import AdminClient, EngineConfig, PaperExchange, commission_for
from core.settings import get_settings, load_settings

pytestmark = pytest.mark.needs_data


@pytest.fixture(autouse=True)
def decoder_errors():
    h = DecoderErrors().install()
    yield h
    h.remove()
    assert not h.records, "the IB client logged decode errors:\n" + "\n".join(h.messages())


@pytest.fixture(params=[157, 176], ids=["sv157", "sv176"])
def sv(request) -> int:
    return request.param


@pytest.fixture
def make_exchange(tmp_path, sv):
    data = require_data()
    made: list[PaperExchange] = []

    def make(start: datetime = START, state: str = "state.json", **kw) -> PaperExchange:
        ex = PaperExchange(data, start=start, server_version=sv, state_file=tmp_path / state, **kw).start()
        made.append(ex)
        return ex

    yield make
    for ex in made:
        ex.stop()


@pytest.fixture
def exchange(make_exchange) -> PaperExchange:
    return make_exchange()


@pytest.fixture
def admin(exchange) -> AdminClient:
    return AdminClient(exchange.admin_port)


@pytest.fixture
def make_broker(exchange):
    made: list[IBBroker] = []

    def make(client_id: int = 11, ex: PaperExchange | None = None, **kw) -> IBBroker:
        kw.setdefault("settings", load_settings())
        kw.setdefault("timeout", 5.0)
        kw.setdefault("connect_timeout", 2.0)
        kw.setdefault("connect_attempts", 1)
        b = IBBroker("127.0.0.1", (ex or exchange).port, client_id, **kw)
        b.connect()
        made.append(b)
        return b

    yield make
    for b in made:
        b.disconnect()


@pytest.fixture
def broker(make_broker) -> IBBroker:
    return make_broker()


def csv_rows(path, lo: datetime, hi: datetime) -> list[tuple]:
    """Rows of a bars CSV with lo <= timestamp < hi (intraday) as (ts, o, h, l, c, v)."""
    out = []
    with open(path) as fh:
        for r in csv.DictReader(fh):
            ts = datetime.fromisoformat(r["timestamp"])
            if lo <= ts < hi:
                out.append((ts, float(r["open"]), float(r["high"]), float(r["low"]), float(r["close"]),
                            float(r["volume"])))
    return out


def bar_at(symbol: str, t: datetime) -> tuple:
    rows = csv_rows(require_data() / "5m" / f"{symbol}.csv", t, t + timedelta(minutes=5))
    assert rows, f"no 5-minute bar of {symbol} at {t}"
    return rows[0]


# ----------------------------------------------------------------------------------------------------------------
# the raw client


def test_connect_under_a_second_with_the_real_client(exchange, sv):
    ib = ibapi.IB()
    t0 = time.monotonic()
    ib.connect("127.0.0.1", exchange.port, clientId=3, timeout=4)
    elapsed = time.monotonic() - t0
    try:
        assert elapsed < 1.0, f"connect() took {elapsed:.2f} s: a request of connect() got no End message"
        assert ib.client.serverVersion() == sv
        assert ib.managedAccounts() == [exchange.account]
        assert ib.reqCurrentTime().timestamp() == pytest.approx(START.timestamp(), abs=1)
    finally:
        ib.disconnect()


def test_reused_client_id_is_refused_with_326_and_broker_takes_the_next(exchange, make_broker):
    ib = ibapi.IB()
    ib.connect("127.0.0.1", exchange.port, clientId=21, timeout=4)
    try:
        errors = []
        ib2 = ibapi.IB()
        ib2.errorEvent += lambda req_id, code, msg, *a: errors.append(code)
        with pytest.raises(Exception):
            ib2.connect("127.0.0.1", exchange.port, clientId=21, timeout=1)
        assert 326 in errors
        b = make_broker(client_id=21)
        assert b.client_id == 22
        b2 = make_broker(client_id=21)
        assert b2.client_id == 23
    finally:
        ib.disconnect()


# ----------------------------------------------------------------------------------------------------------------
# market data


def test_historical_5min_bars_equal_the_files_and_stop_at_the_clock(broker):
    df = broker.historical_bars("AAPL", "5 mins", "2 D")
    files = csv_rows(require_data() / "5m" / "AAPL.csv", datetime(2026, 2, 27, 0, 0, tzinfo=NY), START)
    assert len(df) == len(files) == 78 + 6
    for (ts, row), (fts, o, h, l, c, v) in zip(df.iterrows(), files):
        assert ts == fts and (row.open, row.high, row.low, row.close, row.volume) == (o, h, l, c, v)
    assert str(df.index.tz) == "America/New_York" and df.index.name == "timestamp"
    assert df.index[-1] + timedelta(minutes=5) <= START  # nothing after the clock
    later = broker.historical_bars("AAPL", "5 mins", "1 D", end=START + timedelta(days=3))
    assert later.index[-1] + timedelta(minutes=5) <= START


def test_historical_hourly_and_daily_bars_equal_the_files(broker):
    end = datetime(2024, 6, 7, 16, 0, tzinfo=NY)
    df = broker.historical_bars("TSLA", "1 hour", "1 W", end=end)
    files = csv_rows(require_data() / "1h" / "TSLA.csv", end - timedelta(days=7), end)
    assert [(ts, r.open, r.high, r.low, r.close, r.volume) for ts, r in df.iterrows()] == files
    vix = broker.historical_bars("VIX", "1 day", "5 D", end=datetime(2026, 2, 27, 16, 0, tzinfo=NY))
    with open(require_data() / "daily" / "VIX.csv") as fh:
        rows = {r["timestamp"]: r for r in csv.DictReader(fh)}
    assert len(vix) == 5
    for ts, r in vix.iterrows():
        assert ts.hour == 0 and str(ts.tz) == "America/New_York"
        assert r.close == float(rows[ts.date().isoformat()]["close"])


def test_daily_bars_are_derived_from_5min_bars_where_they_exist(broker):
    df = broker.historical_bars("SMH", "1 day", "3 D", end=datetime(2026, 2, 27, 16, 0, tzinfo=NY))
    five = csv_rows(require_data() / "5m" / "SMH.csv", datetime(2026, 2, 27, 0, 0, tzinfo=NY),
                    datetime(2026, 2, 28, 0, 0, tzinfo=NY))
    last = df.iloc[-1]
    assert (last.open, last.high, last.low, last.close) == (five[0][1], max(r[2] for r in five),
                                                            min(r[3] for r in five), five[-1][4])


def test_current_price_vix_and_delayed_fallback(broker, admin):
    q = broker.current_price("SMH")
    assert q.price == bar_at("SMH", START)[1] and not q.delayed  # the open of the bar in progress
    assert 5 < broker.vix() < 100
    admin.market_data(False)
    d = broker.current_price("SMH")
    assert d.delayed and d.price == q.price


def test_unknown_symbol_is_ib_error_200(broker):
    with pytest.raises(UnknownContractError) as exc:
        broker.historical_bars("NOPE", "1 day", "5 D")
    assert exc.value.code == 200


# ----------------------------------------------------------------------------------------------------------------
# orders


def test_market_order_fills_at_the_open_with_fixed_commission_and_updates_account(broker):
    before = broker.account_values()
    assert before.net_liquidation == before.cash == 1_000_000.0
    info = broker.place_order(OrderRequest("SMH", "BUY", 1000, "mkt-1"))
    filled = broker.wait_for_fill(info.order_id, timeout=5)
    open_ = bar_at("SMH", START)[1]
    assert filled.avg_fill_price == open_ and filled.filled == 1000
    assert filled.commission == pytest.approx(5.00)  # 1000 x 0.005
    [pos] = broker.positions()
    assert (pos.symbol, pos.quantity) == ("SMH", 1000) and pos.avg_cost == pytest.approx(open_ + 0.005)
    after = broker.account_values()
    assert after.cash == pytest.approx(1_000_000 - 1000 * open_ - 5.0, abs=0.01)
    assert after.net_liquidation == pytest.approx(1_000_000 - 5.0, abs=0.01)  # valued at the same open
    [ex] = broker.executions()
    assert (ex.order_ref, ex.shares, ex.price, ex.commission, ex.side) == ("mkt-1", 1000, open_, 5.0, "BUY")
    assert ex.time == START


def test_small_order_pays_the_minimum_commission(broker):
    info = broker.wait_for_fill(broker.place_order(OrderRequest("AAPL", "BUY", 10, "mkt-small")).order_id, 5)
    assert info.commission == 1.00 == commission_for(10, info.avg_fill_price)


def test_limit_order_rests_then_fills_when_the_price_reaches_it(broker, admin):
    bars = csv_rows(require_data() / "5m" / "SMH.csv", START, START + timedelta(hours=3))
    limit = round(min(b[3] for b in bars[:12]) + 0.01, 2)  # touched within the first hour
    hit = next(b for b in bars if b[3] <= limit)
    assert hit[1] > limit  # not at an open: fills at the limit
    info = broker.place_order(OrderRequest("SMH", "BUY", 100, "lmt-1", "LMT", limit_price=limit))
    assert info.status == "Submitted" and info.filled == 0
    admin.set_clock(hit[0] + timedelta(minutes=4))  # inside the bar: its range is not known yet
    assert broker.open_orders()[0].order_ref == "lmt-1"
    admin.set_clock(hit[0] + timedelta(minutes=5))
    filled = broker.wait_for_fill(info.order_id, timeout=5)
    assert filled.avg_fill_price == limit and filled.commission == 1.00
    [ex] = broker.executions()
    assert ex.time == hit[0] + timedelta(minutes=5)


def test_stop_order_triggers(broker, admin):
    bars = csv_rows(require_data() / "5m" / "SMH.csv", START, START + timedelta(hours=6))
    stop = round(min(b[3] for b in bars[:24]) + 0.01, 2)
    hit = next(b for b in bars if b[3] <= stop)
    broker.wait_for_fill(broker.place_order(OrderRequest("SMH", "BUY", 50, "stp-buy")).order_id, 5)
    info = broker.place_order(OrderRequest("SMH", "SELL", 50, "stp-1", "STP", stop_price=stop))
    assert info.status == "Submitted"
    admin.set_clock(START + timedelta(hours=2, minutes=5))
    filled = broker.wait_for_fill(info.order_id, timeout=5)
    assert filled.avg_fill_price == (hit[1] if hit[1] <= stop else stop)
    assert broker.positions() == []


def test_cancel_cancels(broker, exchange):
    info = broker.place_order(OrderRequest("AAPL", "BUY", 5, "cxl-1", "LMT", limit_price=100.0))
    done = broker.cancel_order(info.order_id)
    assert done.status == "Cancelled"
    assert broker.open_orders() == [] and exchange.status()["open_orders"] == []
    with pytest.raises(OrderNotFilledError):
        broker.wait_for_fill(info.order_id, timeout=2)


def test_order_beyond_buying_power_is_rejected_with_201(broker):
    with pytest.raises(OrderRejectedError) as exc:
        broker.place_order(OrderRequest("SMH", "BUY", 20_000, "too-big"))  # about 8M USD > 4 x 1M
    assert exc.value.code == 201
    assert broker.positions() == []


def test_ema_leverage_plus_mtf_positions_fit_the_margin(broker):
    price = broker.current_price("SMH").price
    shares = int(3.75 * 1_000_000 / price)
    broker.wait_for_fill(broker.place_order(OrderRequest("SMH", "BUY", shares, "ema")).order_id, 5)
    for sym in ("AAPL", "TSLA"):
        p = broker.current_price(sym).price
        broker.wait_for_fill(broker.place_order(OrderRequest(sym, "BUY", int(10_000 / p), f"mtf-{sym}")).order_id, 5)
    assert len(broker.positions()) == 3


def test_same_order_ref_twice_is_one_order(broker, make_broker, exchange, admin):
    req = OrderRequest("AAPL", "BUY", 7, "idem-1", "LMT", limit_price=100.0)
    first = broker.place_order(req)
    again = broker.place_order(req)
    assert again.order_id == first.order_id and again.existing
    other = make_broker(client_id=12).place_order(req)  # another connection finds it among open orders
    assert other.perm_id == first.perm_id and other.existing
    assert len(exchange.status()["open_orders"]) == 1
    filled_ref = OrderRequest("AAPL", "BUY", 3, "idem-2")
    broker.place_order(filled_ref)
    later = make_broker(client_id=13)
    assert later.place_order(filled_ref).existing  # found among today's executions
    assert admin.status()["executions"] == 1


def test_reconnect_finds_earlier_executions(broker, admin, make_broker):
    info = broker.wait_for_fill(broker.place_order(OrderRequest("TSLA", "BUY", 20, "rc-1")).order_id, 5)
    admin.drop()
    wait_until(lambda: not broker.is_connected(), 5, "the drop", poll=broker.ib.sleep)
    execs = broker.executions()  # reconnects first
    assert broker.is_connected() and [e.order_ref for e in execs] == ["rc-1"]
    assert execs[0].commission == info.commission
    assert make_broker(client_id=14).place_order(OrderRequest("TSLA", "BUY", 20, "rc-1")).existing


def test_restarted_exchange_has_the_same_account(make_exchange, sv):
    ex = make_exchange(state="restart.json")
    b = IBBroker("127.0.0.1", ex.port, 31, settings=load_settings(), timeout=5, connect_timeout=2,
                 connect_attempts=1)
    with b:
        b.wait_for_fill(b.place_order(OrderRequest("SMH", "BUY", 100, "keep-1")).order_id, 5)
        b.place_order(OrderRequest("SMH", "BUY", 100, "keep-2", "LMT", limit_price=100.0))
        values, positions, execs = b.account_values(), b.positions(), b.executions()
    ex.stop()
    ex2 = make_exchange(state="restart.json", resume=True)
    with IBBroker("127.0.0.1", ex2.port, 31, settings=load_settings(), timeout=5, connect_timeout=2,
                  connect_attempts=1) as b2:
        assert b2.account_values() == values
        assert b2.positions() == positions
        assert [(e.exec_id, e.commission) for e in b2.executions()] == [(e.exec_id, e.commission) for e in execs]
        assert [o.order_ref for o in b2.open_orders()] == ["keep-2"]
        assert b2.place_order(OrderRequest("SMH", "BUY", 100, "keep-1")).existing


# ----------------------------------------------------------------------------------------------------------------
# faults


def test_fault_reject_next_order(broker, admin):
    admin.reject_next(201, "Order rejected - reason: test")
    with pytest.raises(OrderRejectedError, match="reason: test"):
        broker.place_order(OrderRequest("AAPL", "BUY", 1, "rej-1"))
    assert broker.wait_for_fill(broker.place_order(OrderRequest("AAPL", "BUY", 1, "rej-2")).order_id, 5).filled == 1


def test_fault_partial_fill(broker, admin):
    admin.partial_fill(0.5)
    info = broker.place_order(OrderRequest("AAPL", "BUY", 100, "part-1"))
    assert info.status in ("Submitted", "PreSubmitted")
    assert [o["filled"] for o in admin.status()["open_orders"]] == [50]
    with pytest.raises(BrokerTimeoutError):
        broker.wait_for_fill(info.order_id, timeout=0.3)  # half filled, the rest works from the next bar
    assert broker.positions()[0].quantity == 50
    admin.step(300)
    filled = broker.wait_for_fill(info.order_id, 5)
    assert filled.filled == 100
    assert filled.commission == pytest.approx(1.0)  # charged on the order's cumulative shares


def test_fault_delay_times_out_requests(broker, admin):
    admin.delay(1.5)
    broker.ib.RequestTimeout = 0.5
    with pytest.raises(BrokerTimeoutError):
        broker.positions()
    admin.clear_faults()


def test_fault_drop_then_refused_connection(broker, admin, exchange):
    admin.drop()
    wait_until(lambda: not broker.is_connected(), 5, "the drop", poll=broker.ib.sleep)
    assert broker.account_values().net_liquidation == 1_000_000.0  # reconnected
    exchange.stop()
    wait_until(lambda: not broker.is_connected(), 5, "the stop", poll=broker.ib.sleep)
    with pytest.raises(BrokerConnectionError, match="TWS or IB Gateway"):
        broker.positions()


# ----------------------------------------------------------------------------------------------------------------
# the live guard


def test_non_paper_account_refuses_orders_unless_live_is_explicit(make_exchange):
    ex = make_exchange(state="live.json", config=EngineConfig(account="U7654321"))
    with IBBroker("127.0.0.1", ex.port, 41, settings=load_settings(trading_mode="paper"), timeout=5,
                  connect_attempts=1) as b:
        assert not b.is_paper
        with pytest.raises(LiveTradingRefusedError, match="TRADEFLOW_LIVE_ACCOUNT=U7654321"):
            b.place_order(OrderRequest("AAPL", "BUY", 1, "live-1"))
    with IBBroker("127.0.0.1", ex.port, 42, settings=load_settings(trading_mode="live"), timeout=5,
                  connect_attempts=1) as b:
        with pytest.raises(LiveTradingRefusedError):  # live mode alone is not enough
            b.place_order(OrderRequest("AAPL", "BUY", 1, "live-2"))
    with IBBroker("127.0.0.1", ex.port, 43, settings=load_settings(trading_mode="live", live_account="U7654321"),
                  timeout=5, connect_attempts=1) as b:
        b.wait_for_fill(b.place_order(OrderRequest("AAPL", "BUY", 1, "live-3")).order_id, 5)
    assert ex.status()["executions"] == 1


def test_library_under_test():
    assert IB_LIBRARY in ("ib_insync", "ib_async")


# ----------------------------------------------------------------------------------------------------------------
# clock, streams, pacing


def test_running_clock_fills_a_resting_order(broker, admin):
    bars = csv_rows(require_data() / "5m" / "SMH.csv", START, START + timedelta(hours=2))
    limit = round(min(b[3] for b in bars[:6]) + 0.01, 2)  # reached within 30 exchange minutes
    info = broker.place_order(OrderRequest("SMH", "BUY", 10, "run-1", "LMT", limit_price=limit))
    admin.run(1800)  # 30 exchange minutes a real second
    try:
        assert broker.wait_for_fill(info.order_id, timeout=5).avg_fill_price == limit
    finally:
        admin.pause()


def test_streaming_market_data_follows_the_clock(broker, admin):
    ticker = broker.ib.reqMktData(broker.contract("AAPL"))
    wait_until(lambda: ticker.last == bar_at("AAPL", START)[1], 5, "the first tick", poll=broker.ib.sleep)
    admin.set_clock(START + timedelta(minutes=5))
    nxt = bar_at("AAPL", START + timedelta(minutes=5))[1]
    wait_until(lambda: ticker.last == nxt, 5, "the next tick", poll=broker.ib.sleep)
    broker.ib.cancelMktData(ticker.contract)


def test_historical_requests_are_paced(make_broker):
    from core.broker import PacingViolationError

    b = make_broker(client_id=51, historical_pacing=(2, 600.0))
    b.historical_bars("SMH", "1 day", "5 D")
    b.historical_bars("SMH", "1 day", "5 D")
    with pytest.raises(PacingViolationError):
        b.historical_bars("SMH", "1 day", "5 D")  # would wait 10 minutes, longer than the timeout


def test_wait_for_fill_survives_a_dropped_connection(broker, admin):
    admin.set_clock(START + timedelta(minutes=2))  # mid-bar: a market order waits for the 10:05 bar
    info = broker.place_order(OrderRequest("AAPL", "BUY", 10, "drop-1"))
    assert info.status == "Submitted"
    done = broker.place_order(OrderRequest("AAPL", "BUY", 10, "drop-0", "LMT", limit_price=1000.0))
    admin.drop()
    wait_until(lambda: not broker.is_connected(), 5, "the drop", poll=broker.ib.sleep)
    admin.step(180)  # both fill at 10:05 while the broker is away
    filled = broker.wait_for_fill(info.order_id, timeout=5)
    assert filled.filled == 10 and filled.avg_fill_price == bar_at("AAPL", START + timedelta(minutes=5))[1]
    assert broker.wait_for_fill(done.order_id, timeout=5).commission == 1.0


# ----------------------------------------------------------------------------------------------------------------
# decoder alignment: every encoder against the library's own Decoder, and the guard that catches a dropped message


def _encoded(sv: int) -> dict[str, list]:
    from core.paper_exchange import protocol as P
    from core.paper_exchange.server import instrument

    ins = instrument("AAPL")
    o = P.OrderView(5, 11, 1000001, "BUY", 10, "LMT", 100.5, None, "DAY", "DU0000001", "ref", False, "Submitted",
                    0, 0, 0, "20260302 10:00:00 America/New_York", "Filled")
    e = P.ExecView("0001", 5, 11, 1000001, "20260302 10:00:00 America/New_York", "DU0000001", "BOT", 10, 100.5,
                   10, 100.5, "ref", 1.0, 0.0)
    return {
        "openOrder": P.open_order(sv, ins, o), "completedOrder": P.completed_order(sv, ins, o),
        "contractDetails": P.contract_details(sv, 1, ins), "execDetails": P.exec_details(-1, ins, e),
        "commissionReport": P.commission_report(e), "position": P.position("DU0000001", ins, 10, 100.6),
        "portfolioValue": P.portfolio_value(ins, 10, 101.0, 100.6, 4.0, 0.0, "DU0000001"),
        "tickPrice": P.tick_price(1, 4, 100.5, 100), "orderStatus": P.order_status(o),
        "error": P.error(sv, 5, 201, "rejected"), "historicalData": P.historical_data(1, "a", "b", [
            ("1772463600", 1.0, 2.0, 0.5, 1.5, 100.0, 1.2, 1)]),
    }


def test_every_encoder_decodes_and_a_missing_field_is_caught(sv, decoder_errors):
    import importlib
    from unittest import mock

    from core.paper_exchange.protocol import fmt

    Decoder = importlib.import_module(ibapi.__name__ + ".decoder").Decoder
    wrapper = mock.MagicMock()
    wrapper.ib.TimezoneTWS = None
    wrapper.defaultTimezone = timezone.utc  # ib_async
    dec = Decoder(wrapper, sv)
    for name, fields in _encoded(sv).items():
        dec.interpret([fmt(f) for f in fields])
        assert not decoder_errors.records, f"{name} at sv {sv}: " + "\n".join(decoder_errors.messages())
    for name in ("openOrder", "completedOrder", "contractDetails", "execDetails", "commissionReport", "position",
                 "portfolioValue", "tickPrice"):
        fields = _encoded(sv)[name]
        dec.interpret([fmt(f) for f in fields[:-1]])
        assert decoder_errors.records, f"{name} minus its last field was not caught"
        decoder_errors.records.clear()


# ----------------------------------------------------------------------------------------------------------------
# what-if, linked orders, time in force, prices: as IB does them


def test_what_if_returns_the_margin_impact_and_places_nothing(broker, exchange):
    price = broker.current_price("SMH").price
    shares = int(3 * 1_000_000 / price)
    impact = broker.what_if(OrderRequest("SMH", "BUY", shares, "wi-1"))
    assert impact.init_margin_before == 0 and impact.equity_with_loan_before == pytest.approx(1_000_000)
    assert impact.init_margin_after == pytest.approx(0.15 * shares * price, rel=1e-6)  # Portfolio Margin
    assert impact.init_margin_change == pytest.approx(impact.init_margin_after)
    assert impact.fits and impact.warning == ""
    assert impact.commission == pytest.approx(commission_for(shares, price))
    assert exchange.status()["executions"] == 0 and broker.positions() == [] and broker.open_orders() == []
    with pytest.raises(OrderRejectedError) as exc:
        broker.what_if(OrderRequest("SMH", "BUY", 10, "wi-2", "LMT", limit_price=100.005))
    assert exc.value.code == 110


def test_reg_t_what_if_and_rejection_beyond_buying_power(make_exchange, make_broker):
    ex = make_exchange(state="regt.json", config=EngineConfig(account_type="reg_t_margin"))
    b = make_broker(client_id=61, ex=ex)
    price = b.current_price("SMH").price
    four_x = int(4.2 * 1_000_000 / price)
    impact = b.what_if(OrderRequest("SMH", "BUY", four_x, "wi-regt"))
    assert not impact.fits and "MUST EXCEED THE INITIAL MARGIN" in impact.warning
    with pytest.raises(OrderRejectedError) as exc:
        b.place_order(OrderRequest("SMH", "BUY", four_x, "too-big-regt"))
    assert exc.value.code == 201 and "YOUR ORDER IS NOT ACCEPTED" in str(exc.value)
    values = {v.tag: float(v.value) for v in b.ib.accountValues() if v.currency == "USD" and v.tag != "Currency"}
    assert values["BuyingPower"] == pytest.approx(4 * 1_000_000) and values["ExcessLiquidity"] == 1_000_000


def test_bracket_children_are_held_echo_their_parent_and_die_with_it(broker, exchange):
    ib, contract = broker.ib, broker.contract("SMH")
    bracket = ib.bracketOrder("BUY", 10, limitPrice=100.0, takeProfitPrice=900.0, stopLossPrice=50.0)
    trades = [ib.placeOrder(contract, o) for o in bracket]
    parent, take, stop = trades
    wait_until(lambda: parent.orderStatus.status == "Submitted" and take.orderStatus.status ==
               stop.orderStatus.status == "PreSubmitted", 5, "the bracket transmitted, its children held",
               poll=ib.sleep)
    assert take.order.parentId == stop.order.parentId == parent.order.orderId  # echoed in openOrder
    assert take.orderStatus.parentId == parent.order.orderId  # and in orderStatus
    assert len(exchange.status()["open_orders"]) == 3
    ib.cancelOrder(parent.order)
    wait_until(lambda: all(t.isDone() for t in trades), 5, "the children's cancel", poll=ib.sleep)
    assert {t.orderStatus.status for t in trades} == {"Cancelled"}
    assert exchange.status()["open_orders"] == []


def test_bracket_parent_fill_activates_children_one_fill_cancels_the_other_and_the_position_closes(broker, admin):
    ib, contract = broker.ib, broker.contract("SMH")
    open_ = bar_at("SMH", START)[1]
    later = csv_rows(require_data() / "5m" / "SMH.csv", START + timedelta(minutes=5), START + timedelta(hours=1))
    tp = round(max(r[2] for r in later) - 0.01, 2)
    sl = round(open_ - 5.0, 2)
    bracket = ib.bracketOrder("BUY", 10, limitPrice=round(open_ + 1, 2), takeProfitPrice=tp, stopLossPrice=sl)
    parent, take, stop = [ib.placeOrder(contract, o) for o in bracket]
    wait_until(lambda: parent.orderStatus.status == "Filled", 5, "the parent's fill", poll=ib.sleep)
    wait_until(lambda: take.orderStatus.status == stop.orderStatus.status == "Submitted", 5,
               "the children's activation", poll=ib.sleep)
    assert [p.position for p in ib.portfolio()] == [10]
    admin.set_clock(START + timedelta(hours=1))
    wait_until(lambda: take.isDone() and stop.isDone(), 5, "one child's fill and the other's cancel",
               poll=ib.sleep)
    assert sorted([take.orderStatus.status, stop.orderStatus.status]) == ["Cancelled", "Filled"]
    assert broker.positions() == []
    wait_until(lambda: not [p for p in ib.portfolio() if p.position], 5, "the portfolio update with position 0",
               poll=ib.sleep)


def test_oca_group_is_echoed_and_a_fill_cancels_the_sibling(broker):
    ib, contract = broker.ib, broker.contract("AAPL")
    open_ = bar_at("AAPL", START)[1]
    resting, marketable = ibapi.LimitOrder("BUY", 5, 100.0), ibapi.LimitOrder("BUY", 5, round(open_ + 1, 2))
    ib.oneCancelsAll([resting, marketable], "oca-test", 1)
    t1 = ib.placeOrder(contract, resting)
    wait_until(lambda: t1.orderStatus.status == "Submitted", 5, "the resting order", poll=ib.sleep)
    [listed] = [t for t in ib.reqAllOpenOrders() if t.order.orderId == resting.orderId]
    assert (listed.order.ocaGroup, listed.order.ocaType) == ("oca-test", 1)
    t2 = ib.placeOrder(contract, marketable)
    wait_until(lambda: t2.orderStatus.status == "Filled" and t1.isDone(), 5, "the fill and the OCA cancel",
               poll=ib.sleep)
    assert t1.orderStatus.status == "Cancelled"


@pytest.mark.parametrize("offset, status", [(1.0, "Filled"), (-1.0, "Cancelled")])
def test_ioc_fills_at_once_or_is_cancelled(broker, offset, status):
    open_ = bar_at("TSLA", START)[1]
    order = ibapi.LimitOrder("BUY", 3, round(open_ + offset, 2), tif="IOC")
    trade = broker.ib.placeOrder(broker.contract("TSLA"), order)
    wait_until(trade.isDone, 5, "the IOC's end", poll=broker.ib.sleep)
    assert trade.orderStatus.status == status


@pytest.mark.parametrize("price", [100.005, -5.0])
def test_sub_tick_and_negative_prices_are_error_110(broker, exchange, price):
    with pytest.raises(OrderRejectedError) as exc:
        broker.place_order(OrderRequest("AAPL", "BUY", 1, f"tick-{price}", "LMT", limit_price=price))
    assert exc.value.code == 110 and "minimum price variation" in str(exc.value)
    assert exchange.status()["open_orders"] == []


def test_gtd_is_echoed_and_expires(broker, admin):
    order = ibapi.LimitOrder("BUY", 1, 100.0, tif="GTD", goodTillDate="20260302 10:30:00 America/New_York")
    trade = broker.ib.placeOrder(broker.contract("AAPL"), order)
    wait_until(lambda: trade.orderStatus.status == "Submitted", 5, "the GTD order", poll=broker.ib.sleep)
    admin.set_clock(START + timedelta(minutes=31))
    wait_until(trade.isDone, 5, "the GTD expiry", poll=broker.ib.sleep)
    assert trade.orderStatus.status == "Cancelled"


def test_outside_rth_market_order_gets_warning_2109(broker):
    codes = []
    broker.ib.errorEvent += lambda req_id, code, *a: codes.append(code)
    order = ibapi.MarketOrder("BUY", 1, outsideRth=True)
    trade = broker.ib.placeOrder(broker.contract("AAPL"), order)
    wait_until(lambda: trade.orderStatus.status == "Filled", 5, "the fill", poll=broker.ib.sleep)
    assert 2109 in codes


def test_execution_filter_time(broker, admin):
    broker.wait_for_fill(broker.place_order(OrderRequest("AAPL", "BUY", 1, "ef-1")).order_id, 5)
    admin.set_clock(START + timedelta(minutes=5))
    broker.wait_for_fill(broker.place_order(OrderRequest("AAPL", "BUY", 1, "ef-2")).order_id, 5)
    flt = ibapi.ExecutionFilter(time="20260302 10:03:00 America/New_York")
    assert [f.execution.orderRef for f in broker.ib.reqExecutions(flt)] == ["ef-2"]


def test_pnl_and_pnl_single(broker, admin):
    ib = broker.ib
    broker.wait_for_fill(broker.place_order(OrderRequest("SMH", "BUY", 100, "pnl-1")).order_id, 5)
    pnl = ib.reqPnL(broker.account)
    single = ib.reqPnLSingle(broker.account, "", broker.contract("SMH").conId)
    wait_until(lambda: pnl.dailyPnL == pnl.dailyPnL and single.position == 100, 5, "the P&L", poll=ib.sleep)
    assert pnl.dailyPnL == pytest.approx(single.dailyPnL)
    first = pnl.unrealizedPnL
    admin.set_clock(START + timedelta(minutes=30))
    nxt = bar_at("SMH", START + timedelta(minutes=30))[1]
    wait_until(lambda: pnl.unrealizedPnL != first, 5, "a P&L update", poll=ib.sleep)
    assert single.value == pytest.approx(100 * nxt)


def test_keep_up_to_date_bars_follow_the_clock(broker, admin):
    ib = broker.ib
    bars = ib.reqHistoricalData(broker.contract("AAPL"), "", "1 D", "5 mins", "TRADES", True, keepUpToDate=True)
    n, last = len(bars), bars[-1].date
    admin.set_clock(START + timedelta(minutes=15))
    wait_until(lambda: len(bars) >= n + 3, 5, "three new bars", poll=ib.sleep)
    assert bars[-1].date == START + timedelta(minutes=10) and bars[-4].date == last
    assert bars[-1].open == bar_at("AAPL", START + timedelta(minutes=10))[1]
    ib.cancelHistoricalData(bars)


def test_head_timestamp_matching_symbols_and_market_rule(broker):
    ib = broker.ib
    head = ib.reqHeadTimeStamp(broker.contract("VIX"), "TRADES", True, 1)
    assert head.year < 2000
    found = ib.reqMatchingSymbols("SM")
    assert [d.contract.symbol for d in found] == ["SMH"]
    [rule] = ib.reqMarketRule(26)
    assert (rule.lowEdge, rule.increment) == (0, 0.01)


@pytest.mark.parametrize("request_name, code", [("reqRealTimeBars", 420), ("reqMktDepth", 10089),
                                                ("reqFundamentalData", 430), ("reqTickByTickData", 10089),
                                                ("reqHistogramData", 162)])
def test_unimplemented_requests_are_answered_with_ib_errors(broker, request_name, code):
    ib, contract = broker.ib, broker.contract("AAPL")
    codes = []
    ib.errorEvent += lambda req_id, c, *a: codes.append(c)
    ib.RaiseRequestErrors = False
    call = {"reqRealTimeBars": lambda: ib.reqRealTimeBars(contract, 5, "TRADES", True),
            "reqMktDepth": lambda: ib.reqMktDepth(contract, 5),
            "reqFundamentalData": lambda: ib.reqFundamentalData(contract, "ReportSnapshot"),
            "reqTickByTickData": lambda: ib.reqTickByTickData(contract, "Last"),
            "reqHistogramData": lambda: ib.reqHistogramData(contract, True, "1 week")}[request_name]
    call()
    wait_until(lambda: code in codes, 5, f"IB error {code} for {request_name}", poll=ib.sleep)


# ----------------------------------------------------------------------------------------------------------------
# the gateway's life: daily restart, login, data farms, IB's servers


def _codes(broker) -> list[int]:
    codes: list[int] = []
    broker.ib.errorEvent += lambda req_id, code, *a: codes.append(code)
    return codes


def _port_open(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_restart_drops_refuses_then_recovers_with_everything_kept(broker, admin, exchange, make_broker):
    broker.wait_for_fill(broker.place_order(OrderRequest("AAPL", "BUY", 5, "rs-1")).order_id, 5)
    broker.place_order(OrderRequest("AAPL", "BUY", 5, "rs-2", "LMT", limit_price=100.0))
    before = (broker.positions(), [o.order_ref for o in broker.open_orders()], broker.executions())
    assert admin.restart(300)["dropped"] >= 1
    wait_until(lambda: not broker.is_connected(), 5, "the drop", poll=broker.ib.sleep)
    assert not _port_open(exchange.port)
    with pytest.raises(BrokerConnectionError, match="restarts daily at 23:45 New York"):
        broker.positions()
    assert admin.status()["gateway"]["up"] is False
    admin.step(300)
    wait_until(lambda: _port_open(exchange.port), 5, "the port reopened")
    assert (broker.positions(), [o.order_ref for o in broker.open_orders()], broker.executions()) == before
    assert broker.place_order(OrderRequest("AAPL", "BUY", 5, "rs-1")).existing  # nothing sent twice


def test_daily_restart_at_its_time(make_exchange, make_broker):
    from datetime import time as dt_time

    ex = make_exchange(state="daily.json", start=datetime(2026, 3, 2, 11, 40, tzinfo=NY),
                       restart_time=dt_time(11, 45), restart_seconds=240)
    adm = AdminClient(ex.admin_port)
    b = make_broker(client_id=71, ex=ex)
    adm.set_clock(datetime(2026, 3, 2, 11, 46, tzinfo=NY))
    wait_until(lambda: not b.is_connected(), 5, "the daily restart's drop", poll=b.ib.sleep)
    assert adm.status()["gateway"]["restarts"] == 1 and not _port_open(ex.port)
    adm.set_clock(datetime(2026, 3, 2, 11, 49, tzinfo=NY))
    wait_until(lambda: _port_open(ex.port), 5, "the port after the restart")
    assert b.account_values().net_liquidation == 1_000_000.0


def test_logout_stays_down_until_login(broker, admin, exchange):
    admin.logout()
    wait_until(lambda: not broker.is_connected(), 5, "the drop", poll=broker.ib.sleep)
    admin.step(3600)
    assert not _port_open(exchange.port)
    admin.login()
    wait_until(lambda: _port_open(exchange.port), 5, "the port after the login")
    assert broker.positions() == []


def test_farm_messages_and_a_broken_hmds_farm(broker, admin):
    codes = _codes(broker)
    admin.farm("ushmds", False)
    wait_until(lambda: 2105 in codes, 5, "2105", poll=broker.ib.sleep)
    with pytest.raises(IBError) as exc:
        broker.historical_bars("SMH", "1 day", "5 D")
    assert exc.value.code == 162 and "HMDS data farm connection is broken" in str(exc.value)
    admin.farm("ushmds", True)
    admin.farm("usfarm", False)
    admin.farm("usfarm", True)
    admin.farm("secdefnj", True)
    wait_until(lambda: {2106, 2103, 2104, 2158} <= set(codes), 5, "2106, 2103, 2104, 2158", poll=broker.ib.sleep)
    assert len(broker.historical_bars("SMH", "1 day", "5 D")) == 5


def test_lost_connectivity_1100_refuses_orders_until_1102(broker, admin, exchange):
    codes = _codes(broker)
    admin.connectivity(False)
    wait_until(lambda: 1100 in codes, 5, "1100", poll=broker.ib.sleep)
    with pytest.raises(BrokerConnectionError, match="IB 1100"):
        broker.place_order(OrderRequest("AAPL", "BUY", 1, "conn-1"))
    assert exchange.status()["open_orders"] == [] and exchange.status()["executions"] == 0
    admin.connectivity(True)
    wait_until(lambda: 1102 in codes, 5, "1102", poll=broker.ib.sleep)
    assert broker.wait_for_fill(broker.place_order(OrderRequest("AAPL", "BUY", 1, "conn-1")).order_id, 5).filled == 1
    admin.connectivity(False)
    admin.connectivity(True, data_lost=True)
    wait_until(lambda: 1101 in codes, 5, "1101", poll=broker.ib.sleep)


# ----------------------------------------------------------------------------------------------------------------
# hardening: message size, connections, handshakes, the admin token


def _raw(port: int):
    import socket

    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    return s


def _closed(sock, timeout: float = 5.0) -> bool:
    """Whether the server closed `sock` (reads until EOF or a reset within `timeout`)."""
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _handshake(sock, client_id: int) -> None:
    import struct

    from core.paper_exchange import protocol as P

    body = b"v157..176"
    sock.sendall(b"API\0" + struct.pack(">I", len(body)) + body)
    sock.sendall(P.frame([71, 2, client_id, ""]))


def test_an_oversized_message_closes_only_that_connection(exchange, broker):
    import struct

    s = _raw(exchange.port)
    _handshake(s, 81)
    s.sendall(struct.pack(">I", 1 << 30) + b"x" * 16)
    assert _closed(s)
    assert broker.positions() == []  # the others are unaffected


def test_connections_beyond_the_cap_are_closed(make_exchange):
    ex = make_exchange(state="cap.json", max_connections=2)
    a, b = _raw(ex.port), _raw(ex.port)
    wait_until(lambda: len(ex.status()["connections"]) == 2, 5, "two connections")
    c = _raw(ex.port)
    assert _closed(c)
    assert not _closed(a, timeout=0.2)
    a.close(), b.close()


def test_a_half_finished_handshake_times_out(make_exchange):
    ex = make_exchange(state="hs.json", handshake_timeout=0.3)
    s = _raw(ex.port)
    s.sendall(b"API\0")  # and nothing more
    assert _closed(s)
    wait_until(lambda: ex.status()["connections"] == [], 5, "the connection gone")


def test_the_admin_port_requires_its_token(exchange, tmp_path):
    import stat

    from core.paper_exchange import AdminError
    from core.paper_exchange.admin import token_file

    with pytest.raises(AdminError, match="admin token required"):
        AdminClient(exchange.admin_port, token="wrong").status()
    path = token_file(tmp_path / "state.json")
    assert path.read_text().strip() == exchange.admin_token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert AdminClient(exchange.admin_port, token=exchange.admin_token).status()["account"] == exchange.account
    with pytest.raises(AdminError, match="too long"):
        AdminClient(exchange.admin_port).call("status", pad="x" * 70_000)


def test_another_process_reads_the_token_from_the_state_dir(exchange, tmp_path, monkeypatch):
    """What `tradeflow paper-clock` does: no exchange of its own, the token from the configured state file."""
    from core.paper_exchange.admin import register_token, token_for

    register_token(exchange.admin_port, None)  # as if the exchange ran in another process
    monkeypatch.setenv("TRADEFLOW_PAPER_STATE_FILE", str(tmp_path / "state.json"))
    get_settings.cache_clear()
    try:
        assert token_for(exchange.admin_port) == exchange.admin_token
        assert AdminClient(exchange.admin_port).status()["account"] == exchange.account
    finally:
        register_token(exchange.admin_port, exchange.admin_token)
        get_settings.cache_clear()
