"""The kill switch from the command line: `tradeflow halt` stops an order that a running flow has already
decided (a real Prefect flow run against the paper exchange), `tradeflow flatten` cancels and closes everything
as an operator exit even while halted, and both are journaled with who and why."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from prefect import flow

from core.broker import OrderRequest
from core.calendar import NY
from core.controls import KillSwitch
from core.ib_broker import IBBroker
from core.journal import Journal
from core.orders import OrderGateway, TradingHaltedError, order_ref
from core.settings import PROJECT_ROOT, get_settings
from deployments.processes import wait_for
from tasks.runtime import flow_run

AS_OF = dt.datetime(2026, 3, 2, 10, 0, tzinfo=NY)


def tradeflow(*args: str) -> subprocess.CompletedProcess:
    """Run the real command line in a separate process, as an operator would."""
    return subprocess.run([sys.executable, "-m", "deployments.cli", *args], env=dict(os.environ),
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)


@flow(name="halt-probe")
def halt_probe(as_of: dt.datetime, ready: str, go: str) -> dict:
    """Decides an order, says so (`ready` file), waits until told to go on (`go` file), then sends it."""
    with flow_run("halt-probe", as_of) as run:
        with run.broker() as broker:
            gateway = run.gateway(broker)
            request = OrderRequest(symbol="AAPL", action="BUY", quantity=10,
                                   order_ref=order_ref("mtf", "AAPL", run.as_of, "entry"))
            Path(ready).touch()
            wait_for(lambda: Path(go).exists(), 60, "the test to halt")
            info = gateway.submit(request, strategy="mtf", intent="entry", session=run.session.date, as_of=run.as_of)
            return {"sent": info.order_ref}


@pytest.mark.prefect_server
def test_halt_blocks_an_order_already_on_its_way_inside_a_running_flow(exchange, prefect_api,  # noqa: F811
                                                                        tmp_path: Path):
    ready, go = tmp_path / "ready", tmp_path / "go"
    halted: list[subprocess.CompletedProcess] = []

    def operator() -> None:  # another process halts while the flow holds its decided order
        try:
            wait_for(ready.exists, 120, "the flow to decide its order")
            halted.append(tradeflow("halt", "--reason", "test: halt while an order is on its way", "--who", "tester"))
        finally:
            go.touch()

    helper = threading.Thread(target=operator)
    helper.start()
    state = halt_probe(AS_OF, str(ready), str(go), return_state=True)  # a real flow run (ib_insync: main thread)
    helper.join(120)
    assert halted and halted[0].returncode == 0, halted and halted[0].stderr
    assert "halted by tester" in halted[0].stdout
    assert state.is_failed() and "TradingHaltedError" in state.message and "halted by tester" in state.message
    assert not exchange.engine.orders  # the exchange received nothing
    journal = Journal(get_settings().journal_path)
    failed = journal.query("SELECT outcome FROM flow_events WHERE deployment = 'halt-probe' AND event = 'failed'")
    assert "not sent: trading halted by tester" in failed["outcome"][0]
    assert "test: halt while an order is on its way" in failed["outcome"][0]
    assert journal.query("SELECT count(*) AS n FROM orders")["n"][0] == 0
    controls = journal.query("SELECT action, who, reason FROM controls")
    assert controls.to_dict("records") == [{"action": "halt", "who": "tester",
                                            "reason": "test: halt while an order is on its way"}]
    done = tradeflow("resume", "--reason", "test over", "--who", "tester")
    assert done.returncode == 0 and "lifted" in done.stdout and KillSwitch(get_settings().state_dir).current() is None


def test_flatten_cancels_and_closes_everything_while_halted(exchange, state_dir):  # noqa: F811
    settings = get_settings()
    journal = Journal(settings.journal_path)
    switch = KillSwitch(settings.state_dir)
    with IBBroker(client_id=41, settings=settings) as broker:
        gateway = OrderGateway(broker, journal, switch, run_id="setup")
        for req in (OrderRequest("AAPL", "BUY", 10, "setup-aapl"), OrderRequest("TSLA", "SELL", 5, "setup-tsla"),
                    OrderRequest("AAPL", "BUY", 3, "setup-limit", order_type="LMT", limit_price=1.0)):
            gateway.submit(req, strategy="mtf", intent="entry", session=AS_OF.date(), as_of=AS_OF)
    assert {p: v.quantity for p, v in exchange.engine.positions.items() if v.quantity} == {"AAPL": 10, "TSLA": -5}
    assert tradeflow("halt", "--reason", "test: stop everything", "--who", "tester").returncode == 0

    done = tradeflow("flatten", "--reason", "test: close it all", "--who", "tester", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not exchange.engine.open_orders()
    assert not {p: v.quantity for p, v in exchange.engine.positions.items() if v.quantity}
    orders = journal.query("SELECT symbol, action, quantity, status FROM orders WHERE strategy = 'manual' "
                           "AND intent = 'flatten' ORDER BY symbol")
    assert orders.to_dict("records") == [{"symbol": "AAPL", "action": "SELL", "quantity": 10, "status": "Filled"},
                                         {"symbol": "TSLA", "action": "BUY", "quantity": 5, "status": "Filled"}]
    row = journal.query("SELECT who, reason, details FROM controls WHERE action = 'flatten'")
    assert (row["who"][0], row["reason"][0]) == ("tester", "test: close it all")
    assert '"setup-limit"' in row["details"][0] and "manual-AAPL-" in row["details"][0]
    assert switch.current() is not None  # flatten does not lift the halt
