"""The one order path (core.orders.OrderGateway) against the paper exchange: journal first, idempotent by
orderRef, the kill switch checked at the moment of sending, position breaks blocking their symbol."""

from __future__ import annotations

import datetime as dt

import pytest

from core.broker import BracketRequest, OrderRequest
from core.calendar import NY
from core.controls import KillSwitch
from core.ib_broker import IBBroker
from core.journal import Journal
from core.orders import OrderGateway, PositionBreakError, TradingHaltedError, order_ref
from core.settings import get_settings
from tests.broker_support import wait_until

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


def _bracket(prefix: str, qty: int = 10, stop: float = 150.0, target: float = 400.0) -> BracketRequest:
    return BracketRequest(
        _buy(f"{prefix}-entry", qty),
        OrderRequest("AAPL", "SELL", qty, f"{prefix}-sl", "STP", stop_price=stop, tif="GTC", oca_group=f"{prefix}-oca",
                     oca_type=2),
        OrderRequest("AAPL", "SELL", qty, f"{prefix}-tp", "LMT", limit_price=target, tif="GTC",
                     oca_group=f"{prefix}-oca", oca_type=2))


def _at_exchange(exchange, ref: str):
    return next(o for o in exchange.engine.orders.values() if o.order_ref == ref)


def test_a_bracket_is_journaled_leg_by_leg_linked_sent_once_and_kept_in_step(parts, exchange):  # noqa: F811
    broker, journal, _, gateway = parts
    placed = gateway.submit_bracket(_bracket("b1"), strategy="signals", session=DAY, as_of=AS_OF)
    assert not any(leg.existing for leg in placed.legs)
    entry, stop, target = (_at_exchange(exchange, f"b1-{x}") for x in ("entry", "sl", "tp"))
    assert placed.parent_id == entry.order_id and stop.parent_id == target.parent_id == entry.order_id
    assert stop.client_id == target.client_id == entry.client_id and not entry.parent_id
    assert stop.oca_group == target.oca_group == "b1-oca" and stop.oca_type == target.oca_type == 2
    assert entry.transmitted and stop.transmitted and target.transmitted
    broker.wait_for_fill(placed.entry.order_id, 10)
    wait_until(lambda: stop.status == target.status == "Submitted", 5, "the children working after the fill")
    rows = journal.query("SELECT order_ref, intent, status, perm_id FROM orders WHERE order_ref LIKE 'b1-%' "
                         "ORDER BY order_ref")
    assert list(rows["intent"]) == ["entry", "stop", "target"] and "Created" not in set(rows["status"])
    links = journal.query("SELECT * FROM order_links ORDER BY order_ref")
    assert list(links["order_ref"]) == ["b1-sl", "b1-tp"] and set(links["parent_ref"]) == {"b1-entry"}
    assert set(links["parent_order_id"]) == {entry.order_id} and set(links["parent_perm_id"]) == {entry.perm_id}
    assert set(links["oca_group"]) == {"b1-oca"}
    # a rerun sends nothing: the journal holds every leg as sent, and the broker finds each by its orderRef
    again = gateway.submit_bracket(_bracket("b1"), strategy="signals", session=DAY, as_of=AS_OF)
    assert all(leg.existing for leg in again.legs)
    assert all(leg.existing for leg in broker.place_bracket(_bracket("b1")).legs)
    assert len([o for o in exchange.engine.orders.values() if o.order_ref.startswith("b1-")]) == 3
    # a scale-in: the children changed to the position's 15 shares, still attached to their parent
    gateway.submit(_buy("b1-scale", 5), strategy="signals", intent="scale_in", session=DAY, as_of=AS_OF)
    working = {o.order_ref: o for o in broker.open_orders()}
    for ref in ("b1-sl", "b1-tp"):
        got = gateway.modify_quantity(working[ref], 15, strategy="signals", why="scale-in b1-scale")
        assert got.quantity == 15 and _at_exchange(exchange, ref).quantity == 15
        assert _at_exchange(exchange, ref).parent_id == entry.order_id
    assert gateway.modify_quantity(got, 15, strategy="signals", why="again") == got  # nothing sent
    changes = journal.query("SELECT quantity_before, quantity_after, reason FROM order_changes "
                            "WHERE order_ref = 'b1-sl'")
    assert changes.values.tolist() == [[10, 15, "scale-in b1-scale"]]


def test_a_bracket_whose_process_died_after_its_entry_gets_only_its_missing_children(parts, exchange):  # noqa: F811
    from core.ib_broker import ibapi

    broker, _, _, _ = parts
    held = ibapi.MarketOrder("BUY", 10, orderRef="b2-entry", transmit=False, account=broker.account)
    broker.ib.placeOrder(broker.contract("AAPL"), held)
    wait_until(lambda: any(o.order_ref == "b2-entry" for o in exchange.engine.orders.values()), 5, "the held entry")
    assert not _at_exchange(exchange, "b2-entry").transmitted
    placed = broker.place_bracket(_bracket("b2"))
    assert placed.entry.existing and not placed.stop_loss.existing and not placed.take_profit.existing
    entry = _at_exchange(exchange, "b2-entry")
    assert [o.order_ref for o in exchange.engine.orders.values()] == ["b2-entry", "b2-sl", "b2-tp"]
    assert _at_exchange(exchange, "b2-sl").parent_id == _at_exchange(exchange, "b2-tp").parent_id == entry.order_id
    assert entry.transmitted  # the last child transmitted the chain


def test_a_halt_stops_a_bracket_before_any_leg_is_journaled(parts, exchange):  # noqa: F811
    _, journal, switch, gateway = parts
    switch.halt(journal, "tester", "testing the kill switch", AS_OF)
    with pytest.raises(TradingHaltedError, match="the bracket BUY 10 AAPL"):
        gateway.submit_bracket(_bracket("b3"), strategy="signals", session=DAY, as_of=AS_OF)
    assert not exchange.engine.orders
    assert journal.query("SELECT count(*) AS n FROM orders")["n"][0] == 0
    with pytest.raises(ValueError, match="other side"):
        BracketRequest(_buy("x-e"), _buy("x-sl"), _buy("x-tp"))


def test_a_refused_bracket_is_journaled_inactive_leg_by_leg(parts, exchange):  # noqa: F811
    from core.broker import OrderRejectedError
    from core.paper_exchange import AdminClient

    _, journal, _, gateway = parts
    AdminClient(exchange.admin_port).reject_next(201, "Order rejected - reason:testing")
    with pytest.raises(OrderRejectedError, match="testing"):
        gateway.submit_bracket(_bracket("b4"), strategy="signals", session=DAY, as_of=AS_OF)
    rows = journal.query("SELECT order_ref, status FROM orders WHERE order_ref LIKE 'b4-%' ORDER BY order_ref")
    assert rows.values.tolist() == [["b4-entry", "Inactive"], ["b4-sl", "Inactive"], ["b4-tp", "Inactive"]]
    assert not [o for o in exchange.engine.orders.values() if o.is_open]
