"""The live guard on every broker action that changes the account (issue 19, finding 1).

The paper exchange presents a live-looking account (U7654321, not DU...). The position and the working orders are
set up through a connection that has the double opt-in (TRADING_MODE=live and TRADEFLOW_LIVE_ACCOUNT); then the
operator removes TRADING_MODE=live to stop trading and leaves the gateway port. From then on nothing may change
the account: no place, no cancel, no global cancel; the 09:30 equity snapshot must not cancel the working stop it
cannot replace, and `tradeflow flatten` must refuse as a whole before it cancels anything.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from core.broker import LiveTradingRefusedError, OrderRequest
from core.controls import KillSwitch
from core.ib_broker import IBBroker
from core.journal import Journal
from core.orders import OrderGateway
from core.paper_exchange import EngineConfig, PaperExchange
from core.settings import PROJECT_ROOT, get_settings, load_settings
from flows.equity_snapshot import equity_snapshot
from tests.broker_support import require_data

NY = ZoneInfo("America/New_York")
LIVE = "U7654321"
OPEN = datetime(2025, 5, 28, 9, 30, tzinfo=NY)


@pytest.fixture
def live_exchange(tmp_path, state_dir, monkeypatch):
    data = require_data()
    ex = PaperExchange(data, start=OPEN, state_file=tmp_path / "live.json", config=EngineConfig(account=LIVE)).start()
    monkeypatch.setenv("IBKR_HOST", "127.0.0.1")
    monkeypatch.setenv("IBKR_PORT", str(ex.port))
    monkeypatch.setenv("TRADEFLOW_DATA_DIR", str(data))
    monkeypatch.delenv("TRADING_MODE", raising=False)
    monkeypatch.delenv("TRADEFLOW_LIVE_ACCOUNT", raising=False)
    get_settings.cache_clear()
    try:
        yield ex
    finally:
        ex.stop()


def _account_state(ex: PaperExchange) -> tuple:
    orders = sorted((o.perm_id, o.order_ref, o.status, o.quantity) for o in ex.engine.orders.values())
    positions = sorted((s, p.quantity) for s, p in ex.engine.positions.items() if p.quantity)
    return orders, positions, len(ex.engine.executions)


def _set_up_opted_in(ex: PaperExchange) -> None:
    """100 SMH held with yesterday's EMA stop working, and the trader's own manual stop on AAPL, placed while both
    opt-ins were set."""
    live = load_settings(trading_mode="live", live_account=LIVE)
    with IBBroker(client_id=11, settings=live) as b:  # equity-snapshot's client id (IBKR_CLIENT_ID 1 + 10)
        b.wait_for_fill(b.place_order(OrderRequest("SMH", "BUY", 100, "ema-SMH-20250527-entry")).order_id, 10)
        b.place_order(OrderRequest("SMH", "SELL", 100, "ema-SMH-20250527-entry-stop", "STP", stop_price=200.0,
                                   tif="GTC"))
        b.wait_for_fill(b.place_order(OrderRequest("AAPL", "BUY", 10, "manual-buy")).order_id, 10)
    with IBBroker(client_id=7, settings=live) as b:  # the trader's own stop, from another client
        b.place_order(OrderRequest("AAPL", "SELL", 10, "typed-in-tws", "STP", stop_price=150.0, tif="GTC"))
    assert len(ex.engine.open_orders()) == 2


def test_no_broker_action_changes_a_live_account_without_the_double_opt_in(live_exchange):
    _set_up_opted_in(live_exchange)
    before = _account_state(live_exchange)
    settings = get_settings()
    assert settings.trading_mode == "paper"
    stop = next(o for o in live_exchange.engine.open_orders() if o.order_ref == "typed-in-tws")
    with IBBroker(client_id=7, settings=settings) as b:  # even the client that placed it may not cancel it
        assert not b.is_paper
        order_id = next(o.order_id for o in b.open_orders() if o.order_ref == "typed-in-tws")
        with pytest.raises(LiveTradingRefusedError, match=r"REFUSED cancelling order .*TRADING_MODE=live"):
            b.cancel_order(order_id)
        with pytest.raises(LiveTradingRefusedError, match="REFUSED a global cancel"):
            b.cancel_all_orders()
        with pytest.raises(LiveTradingRefusedError, match="REFUSED placing SELL 10 AAPL"):
            b.place_order(OrderRequest("AAPL", "SELL", 10, "manual-sell"))
        with pytest.raises(LiveTradingRefusedError):  # a modify is a place with the same order id
            b.place_order(OrderRequest("AAPL", "SELL", 10, "typed-in-tws", "STP", stop_price=140.0, tif="GTC"))
        journal = Journal(settings.journal_path)
        gateway = OrderGateway(b, journal, KillSwitch(settings.state_dir), run_id="probe")
        with pytest.raises(LiveTradingRefusedError):
            gateway.submit(OrderRequest("SMH", "SELL", 100, "ema-SMH-20250528-exit"), strategy="ema",
                           intent="exit", session=OPEN.date(), as_of=OPEN)
        with pytest.raises(LiveTradingRefusedError):
            gateway.check_sendable(OrderRequest("SMH", "SELL", 100, "x"), strategy="ema", intent="stop")
    assert _account_state(live_exchange) == before
    assert stop.is_open
    # nothing journaled as Created (no journal at all: the gateway refused before its first write)
    assert not journal.path.exists() or journal.query("SELECT count(*) AS n FROM orders")["n"][0] == 0


def test_flatten_refuses_as_a_whole_before_cancelling_anything(live_exchange):
    _set_up_opted_in(live_exchange)
    before = _account_state(live_exchange)
    done = subprocess.run([sys.executable, "-m", "deployments.cli", "flatten", "--yes", "--reason",
                           "test: stop it all", "--who", "tester"], env=dict(os.environ), cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    assert "REFUSED tradeflow flatten" in done.stderr and f"TRADEFLOW_LIVE_ACCOUNT={LIVE}" in done.stderr
    assert "cancelled" not in done.stdout
    assert _account_state(live_exchange) == before  # the manual stop and the EMA stop are still working
    row = Journal(get_settings().journal_path).query("SELECT details FROM controls WHERE action = 'flatten'")
    assert "LiveTradingRefusedError" in row["details"][0]


def test_the_opening_stop_swap_cancels_nothing_it_may_not_replace(live_exchange, prefect_harness):
    _set_up_opted_in(live_exchange)
    before = _account_state(live_exchange)
    state = equity_snapshot(OPEN, return_state=True)
    assert state.is_failed() and "LiveTradingRefusedError" in state.message, state.message
    assert _account_state(live_exchange) == before
    assert any(o.order_ref == "ema-SMH-20250527-entry-stop" for o in live_exchange.engine.open_orders())
