"""IB's cancelOrder acts only on orders of the connection's own client id. Deployments connect with distinct
ids, yet one must cancel another's order (ema-entry cancels the stop equity-snapshot placed): IBBroker cancels
through a short connection with the owner's id. Against the paper exchange, which keeps the same rule."""

from __future__ import annotations

import pytest

from core.broker import BrokerConnectionError, OrderRequest
from core.ib_broker import IBBroker
from core.settings import get_settings


def _stop(ref: str) -> OrderRequest:
    return OrderRequest(symbol="SMH", action="SELL", quantity=10, order_ref=ref, order_type="STP",
                        stop_price=100.0, tif="GTC")


def test_an_order_of_another_client_is_cancelled_through_its_owner(exchange):  # noqa: F811
    settings = get_settings()
    with IBBroker(client_id=11, settings=settings) as owner:
        owner.place_order(OrderRequest(symbol="SMH", action="BUY", quantity=10, order_ref="buy"))
        placed = owner.place_order(_stop("stop-of-11"))
    with IBBroker(client_id=31, settings=settings) as other:
        [working] = [o for o in other.open_orders() if o.order_ref == "stop-of-11"]
        done = other.cancel_order(working.order_id)
        assert done.status == "Cancelled" and done.perm_id == placed.perm_id
        assert not [o for o in other.open_orders() if o.order_ref == "stop-of-11"]
    assert [o.status for o in exchange.engine.orders.values() if o.order_ref == "stop-of-11"] == ["Cancelled"]


def test_a_connected_owner_is_reported_not_bypassed(exchange):  # noqa: F811
    settings = get_settings()
    with IBBroker(client_id=12, settings=settings) as owner:
        owner.place_order(OrderRequest(symbol="SMH", action="BUY", quantity=10, order_ref="buy"))
        owner.place_order(_stop("stop-of-12"))
        with IBBroker(client_id=32, settings=settings) as other:
            [working] = [o for o in other.open_orders() if o.order_ref == "stop-of-12"]
            with pytest.raises(BrokerConnectionError, match="placed by client id 12"):
                other.cancel_order(working.order_id)
    assert [o.status for o in exchange.engine.orders.values() if o.order_ref == "stop-of-12"] == ["Submitted"]
