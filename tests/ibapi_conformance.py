"""Conformance of the paper exchange with IB's official Python client, `ibapi` from the package index (9.81.1,
which speaks server versions 100..157, so the exchange answers at 157), in its own throwaway environment
(`tests/ibapi_conformance.sh`; run from `tests/test_ibapi_conformance.py`). Not collected by the project's own
pytest run (the file name does not start with test_): `ibapi` is not installed there.

The client is used as IB documents it: an `EWrapper` + `EClient` app whose `run()` loop reads the socket on a
thread. Every callback is recorded; a message the decoder could not read (logged at ERROR by `ibapi`) fails the
test. Covered: connect and the gateway's greeting, contract details, historical bars (and keepUpToDate updates),
a market order's fill with its commission, what-if margin, a bracket (parentId echoed, children held, cancelled
with the parent), an OCA group, IOC, error 110, reqPnL, ExecutionFilter.time, unimplemented requests answered
with IB's errors, data-farm and connectivity messages.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from ibapi.client import EClient
from ibapi.contract import Contract
from ibapi.execution import ExecutionFilter
from ibapi.order import Order
from ibapi.wrapper import EWrapper

from core.paper_exchange import AdminClient, PaperExchange
from tests.data import require_bars

NY = ZoneInfo("America/New_York")
START = datetime(2026, 3, 2, 10, 0, tzinfo=NY)


class App(EWrapper, EClient):
    """Records every callback the tests look at."""

    def __init__(self) -> None:
        EWrapper.__init__(self)
        EClient.__init__(self, wrapper=self)
        self.lock = threading.Lock()
        self.errors: list[tuple[int, int, str]] = []
        self.next_id: int | None = None
        self.accounts = ""
        self.open_orders: dict[int, tuple] = {}
        self.statuses: dict[int, dict] = {}
        self.execs: dict[int, list] = defaultdict(list)
        self.commissions: list = []
        self.bars: dict[int, list] = defaultdict(list)
        self.updates: dict[int, list] = defaultdict(list)
        self.ended: set[int] = set()
        self.details: dict[int, list] = defaultdict(list)
        self.pnls: dict[int, tuple] = {}

    def error(self, reqId, errorCode, errorString, *rest):  # noqa: N802, N803 - ibapi's names
        with self.lock:
            self.errors.append((reqId, errorCode, errorString))

    def nextValidId(self, orderId):  # noqa: N802, N803
        self.next_id = orderId

    def managedAccounts(self, accountsList):  # noqa: N802, N803
        self.accounts = accountsList

    def openOrder(self, orderId, contract, order, orderState):  # noqa: N802, N803
        self.open_orders[orderId] = (contract, order, orderState)

    def orderStatus(self, orderId, status, filled, remaining, avgFillPrice, permId, parentId,  # noqa: N802, N803
                    lastFillPrice, clientId, whyHeld, mktCapPrice=0.0):
        self.statuses[orderId] = {"status": status, "filled": float(filled), "parentId": parentId,
                                  "avgFillPrice": avgFillPrice, "whyHeld": whyHeld}

    def execDetails(self, reqId, contract, execution):  # noqa: N802, N803
        self.execs[reqId].append(execution)

    def execDetailsEnd(self, reqId):  # noqa: N802, N803
        self.ended.add(reqId)

    def commissionReport(self, commissionReport):  # noqa: N802, N803
        self.commissions.append(commissionReport)

    def historicalData(self, reqId, bar):  # noqa: N802, N803
        self.bars[reqId].append(bar)

    def historicalDataEnd(self, reqId, start, end):  # noqa: N802, N803
        self.ended.add(reqId)

    def historicalDataUpdate(self, reqId, bar):  # noqa: N802, N803
        self.updates[reqId].append(bar)

    def contractDetails(self, reqId, contractDetails):  # noqa: N802, N803
        self.details[reqId].append(contractDetails)

    def contractDetailsEnd(self, reqId):  # noqa: N802, N803
        self.ended.add(reqId)

    def pnl(self, reqId, dailyPnL, unrealizedPnL, realizedPnL):  # noqa: N802, N803
        self.pnls[reqId] = (dailyPnL, unrealizedPnL, realizedPnL)

    def codes(self) -> set[int]:
        with self.lock:
            return {c for _, c, _ in self.errors}


def wait_until(cond, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


class DecodeErrors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(autouse=True)
def decode_errors():
    h = DecodeErrors()
    logging.getLogger("ibapi").addHandler(h)
    yield h
    logging.getLogger("ibapi").removeHandler(h)
    assert not h.records, "ibapi logged errors:\n" + "\n".join(r.getMessage() for r in h.records)


@pytest.fixture
def exchange(tmp_path: Path):
    data = require_bars("5m/SMH.csv")
    ex = PaperExchange(data, start=START, state_file=tmp_path / "state.json").start()
    yield ex
    ex.stop()


@pytest.fixture
def admin(exchange) -> AdminClient:
    return AdminClient(exchange.admin_port)


@pytest.fixture
def app(exchange):
    a = App()
    a.connect("127.0.0.1", exchange.port, 7)
    thread = threading.Thread(target=a.run, daemon=True)
    thread.start()
    wait_until(lambda: a.next_id is not None and a.accounts, 5, "nextValidId and managedAccounts")
    yield a
    a.disconnect()
    thread.join(5)


def stock(symbol: str) -> Contract:
    c = Contract()
    c.symbol, c.secType, c.exchange, c.currency = symbol, "STK", "SMART", "USD"
    return c


def order(action: str, qty: int, otype: str = "MKT", lmt: float | None = None, aux: float | None = None,
          **kw) -> Order:
    o = Order()
    o.action, o.totalQuantity, o.orderType = action, qty, otype
    o.eTradeOnly = o.firmQuoteOnly = False
    if lmt is not None:
        o.lmtPrice = lmt
    if aux is not None:
        o.auxPrice = aux
    for k, v in kw.items():
        setattr(o, k, v)
    return o


def place(app: App, contract: Contract, o: Order) -> int:
    oid = app.next_id
    app.next_id += 1
    app.placeOrder(oid, contract, o)
    return oid


def status(app: App, oid: int) -> str:
    return app.statuses.get(oid, {}).get("status", "")


def test_connect_at_157_with_the_gateway_greeting(app, exchange):
    assert app.serverVersion() == 157 and app.accounts == exchange.account
    wait_until(lambda: {2104, 2106, 2158} <= app.codes(), 5, "the data farms' OK messages")


def test_contract_details_and_historical_bars(app):
    app.reqContractDetails(1, stock("SMH"))
    wait_until(lambda: 1 in app.ended, 5, "contract details")
    [cd] = app.details[1]
    assert cd.contract.conId and cd.minTick == 0.01
    app.reqHistoricalData(2, stock("SMH"), "", "5 D", "1 day", "TRADES", 1, 1, False, [])
    wait_until(lambda: 2 in app.ended, 5, "historical bars")
    assert len(app.bars[2]) == 5


def test_keep_up_to_date_bars(app, admin):
    app.reqHistoricalData(3, stock("AAPL"), "", "1 D", "5 mins", "TRADES", 1, 1, True, [])
    wait_until(lambda: 3 in app.ended, 5, "the first bars")
    admin.set_clock(START + timedelta(minutes=10))
    wait_until(lambda: len(app.updates[3]) >= 2, 5, "historicalDataUpdate")


def test_market_order_fill_with_commission(app):
    oid = place(app, stock("AAPL"), order("BUY", 10))
    wait_until(lambda: status(app, oid) == "Filled" and app.commissions, 5, "the fill and its commission")
    assert app.statuses[oid]["filled"] == 10 and app.commissions[0].commission == 1.0


def test_what_if_returns_margin(app):
    oid = place(app, stock("SMH"), order("BUY", 100, whatIf=True))
    wait_until(lambda: oid in app.open_orders, 5, "the what-if answer")
    _, o, state = app.open_orders[oid]
    assert o.whatIf and float(state.initMarginAfter) > 0 and float(state.equityWithLoanBefore) == 1_000_000


def test_bracket_parent_id_echoed_children_held_and_cancelled_with_the_parent(app):
    c = stock("SMH")
    parent = place(app, c, order("BUY", 10, "LMT", 100.0, transmit=False))
    take = place(app, c, order("SELL", 10, "LMT", 900.0, parentId=parent, transmit=False))
    stop = place(app, c, order("SELL", 10, "STP", aux=50.0, parentId=parent, transmit=True))
    wait_until(lambda: status(app, parent) == "Submitted" and status(app, take) == status(app, stop) ==
               "PreSubmitted", 5, "the bracket")
    assert app.open_orders[take][1].parentId == parent and app.statuses[stop]["parentId"] == parent
    app.cancelOrder(parent)
    wait_until(lambda: {status(app, x) for x in (parent, take, stop)} == {"Cancelled"}, 5, "the cascade")


def test_oca_group(app):
    c = stock("AAPL")
    resting = place(app, c, order("BUY", 5, "LMT", 100.0, ocaGroup="g1", ocaType=1))
    wait_until(lambda: status(app, resting) == "Submitted", 5, "the resting order")
    assert app.open_orders[resting][1].ocaGroup == "g1" and app.open_orders[resting][1].ocaType == 1
    filled = place(app, c, order("BUY", 5, "LMT", 1000.0, ocaGroup="g1", ocaType=1))
    wait_until(lambda: status(app, filled) == "Filled" and status(app, resting) == "Cancelled", 5, "the OCA")


def test_ioc_and_error_110(app):
    c = stock("TSLA")
    ioc = place(app, c, order("BUY", 1, "LMT", 1.0, tif="IOC"))
    wait_until(lambda: status(app, ioc) == "Cancelled", 5, "the IOC cancel")
    bad = place(app, c, order("BUY", 1, "LMT", 100.005))
    wait_until(lambda: (bad, 110) in {(r, c_) for r, c_, _ in app.errors}, 5, "error 110")


def test_pnl_and_execution_filter_time(app, admin):
    first = place(app, stock("AAPL"), order("BUY", 1))
    wait_until(lambda: status(app, first) == "Filled", 5, "the first fill")
    admin.set_clock(START + timedelta(minutes=5))
    second = place(app, stock("AAPL"), order("BUY", 1))
    wait_until(lambda: status(app, second) == "Filled", 5, "the second fill")
    flt = ExecutionFilter()
    flt.time = "20260302 10:03:00 America/New_York"
    app.reqExecutions(9, flt)
    wait_until(lambda: 9 in app.ended, 5, "executions")
    assert [e.orderId for e in app.execs[9]] == [second]
    app.reqPnL(10, app.accounts, "")
    wait_until(lambda: 10 in app.pnls, 5, "pnl")


def test_unimplemented_requests_get_ib_errors(app):
    app.reqRealTimeBars(20, stock("AAPL"), 5, "TRADES", True, [])
    app.reqMktDepth(21, stock("AAPL"), 5, False, [])
    wait_until(lambda: {(20, 420), (21, 10089)} <= {(r, c) for r, c, _ in app.errors}, 5, "420 and 10089")


def test_farm_and_connectivity_messages(app, admin):
    admin.farm("ushmds", False)
    admin.farm("ushmds", True)
    admin.connectivity(False)
    admin.connectivity(True)
    wait_until(lambda: {2105, 2106, 1100, 1102} <= app.codes(), 5, "2105, 2106, 1100, 1102")
