"""The one order path (core.orders.OrderGateway) against the paper exchange: journal first, idempotent by
orderRef, the kill switch checked at the moment of sending, position breaks blocking their symbol."""

from __future__ import annotations

import datetime as dt

import pytest

from core.broker import OrderRequest
from core.calendar import NY
from core.controls import KillSwitch
from core.ib_broker import IBBroker
from core.journal import Journal
from core.orders import OrderGateway, PositionBreakError, TradingHaltedError, order_ref
from core.settings import get_settings

AS_OF = dt.datetime(2026, 3, 2, 10, 0, tzinfo=NY)
DAY = AS_OF.date()


@pytest.fixture
def parts(exchange):  # noqa: F811
    settings = get_settings()
    journal = Journal(settings.journal_path)
    switch = KillSwitch(settings.state_dir)
    with IBBroker(client_id=41, settings=settings) as broker:
        yield broker, journal, switch, OrderGateway(broker, journal, switch, run_id="test-run")


def _buy(ref: str, qty: int = 10) -> OrderRequest:
    return OrderRequest(symbol="AAPL", action="BUY", quantity=qty, order_ref=ref)


def test_an_order_is_journaled_then_sent_once(parts, exchange):  # noqa: F811
    broker, journal, _, gateway = parts
    ref = order_ref("mtf", "AAPL", AS_OF, "entry")
    assert ref == "mtf-AAPL-20260302T1000-entry"
    first = gateway.submit(_buy(ref), strategy="mtf", intent="entry", session=DAY, as_of=AS_OF)
    again = gateway.submit(_buy(ref), strategy="mtf", intent="entry", session=DAY, as_of=AS_OF)
    assert not first.existing and again.existing
    assert len([o for o in exchange.engine.orders.values() if o.order_ref == ref]) == 1
    row = journal.query("SELECT strategy, intent, status, perm_id FROM orders WHERE order_ref = ?", [ref])
    assert list(row.iloc[0][["strategy", "intent"]]) == ["mtf", "entry"]
    assert row["perm_id"][0] == first.perm_id and row["status"][0] != "Created"


def test_a_halt_stops_orders_and_resume_lets_them_go(parts, exchange):  # noqa: F811
    broker, journal, switch, gateway = parts
    switch.halt(journal, "tester", "testing the kill switch", AS_OF)
    with pytest.raises(TradingHaltedError, match="halted by tester"):
        gateway.submit(_buy("r-halted"), strategy="mtf", intent="entry", session=DAY, as_of=AS_OF)
    assert not exchange.engine.orders
    assert journal.query("SELECT count(*) AS n FROM orders")["n"][0] == 0
    exit_ = OrderRequest(symbol="AAPL", action="SELL", quantity=1, order_ref="r-operator-exit")
    gateway.submit(exit_, strategy="manual", intent="flatten", session=DAY, as_of=AS_OF, operator=True)
    assert [o.order_ref for o in exchange.engine.orders.values()] == ["r-operator-exit"]  # operator exits pass
    switch.resume(journal, "tester", "done", AS_OF + dt.timedelta(minutes=1))
    assert gateway.submit(_buy("r-after"), strategy="mtf", intent="entry", session=DAY, as_of=AS_OF).order_id
    controls = journal.query("SELECT action, who, reason FROM controls ORDER BY action_at")
    assert list(controls["action"]) == ["halt", "resume"] and set(controls["who"]) == {"tester"}


def test_a_halt_set_while_the_order_is_on_its_way_stops_it(parts, exchange):  # noqa: F811
    broker, journal, switch, gateway = parts
    real_transaction = journal.transaction

    def transaction_then_halt():  # the operator halts while the flow is writing the order to the journal
        cm = real_transaction()

        class Wrapped:
            def __enter__(self):
                return cm.__enter__()

            def __exit__(self, *exc):
                out = cm.__exit__(*exc)
                if switch.current() is None:
                    switch.halt(journal, "tester", "halt mid-flight", AS_OF)
                return out
        return Wrapped()

    gateway.journal = type("J", (), {"transaction": staticmethod(transaction_then_halt)})()
    with pytest.raises(TradingHaltedError):
        gateway.submit(_buy("r-midflight"), strategy="mtf", intent="entry", session=DAY, as_of=AS_OF)
    assert not exchange.engine.orders


def test_a_position_break_blocks_its_symbol_until_resolved(parts, exchange):  # noqa: F811
    broker, journal, _, gateway = parts
    with journal.transaction() as tx:
        tx.record_break("AAPL", DAY, 10, 0, AS_OF)
    with pytest.raises(PositionBreakError, match="tradeflow resolve AAPL"):
        gateway.submit(_buy("r-break"), strategy="mtf", intent="entry", session=DAY, as_of=AS_OF)
    tsla = OrderRequest(symbol="TSLA", action="BUY", quantity=1, order_ref="r-tsla")
    assert gateway.submit(tsla, strategy="mtf", intent="entry", session=DAY, as_of=AS_OF).order_id
    with journal.transaction() as tx:
        assert tx.resolve_breaks("AAPL", "tester", "bought by hand in TWS; journal corrected", AS_OF) == 1
    assert gateway.submit(_buy("r-break"), strategy="mtf", intent="entry", session=DAY, as_of=AS_OF).order_id
