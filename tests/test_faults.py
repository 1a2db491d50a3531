"""Fault tests: the real flows (real Prefect flow runs, the production IBBroker, a real DuckDB journal) against the
paper exchange, with a fault injected at an exact point: a process killed between its order and its journal
write, a connection dropped in the middle of a flow, no exchange at all, a run started long after its time, and
a person holding a SQL session while three flows write. Bad data: tests/test_faults_data.py.

The EMA session used: 2026-03-02, the `exchange` fixture's day. SMH's EMA 25/125 are BULL (final 2026-02-27:
EMA25 405.68 > EMA125 360.85), so `ema-entry` at 15:55 from a flat account buys at the 15:55 bar's open.
`mtf-signal` runs with real registered models of known P(up) (tests/mtf_support.py): AAPL's champion says 0.9
(flat: it buys), TSLA's 0.1 (no trade).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from prefect.states import StateType

from core.calendar import NY
from core.journal import Journal
from core.paper_exchange import AdminClient, PaperExchange
from core.settings import get_settings
from flows.ema_entry import ema_entry
from flows.reconciliation import reconciliation
from tests.fault_support import (
    assert_nothing_lost,
    drop,
    flow_process,
    journal_rows,
    on_order_accepted,
    on_request,
)
from tests.fault_workers import flow_of
from tests.mtf_support import model_templates, models  # noqa: F401
from tests.test_ib_broker_unit import closed_port


DAY = datetime(2026, 3, 2, tzinfo=NY).date()
ENTRY = datetime(2026, 3, 2, 15, 55, tzinfo=NY)
EVENING = datetime(2026, 3, 2, 17, 0, tzinfo=NY)
ENTRY_REF = "ema-SMH-20260302-entry"
MTF_AT = datetime(2026, 3, 2, 10, 5, tzinfo=NY)
MTF_REF = "mtf-AAPL-20260302T1005-entry"


def journal() -> Journal:
    return Journal(get_settings().journal_path)


def orders_at_exchange(ex: PaperExchange, ref: str) -> list:
    return [o for o in list(ex.engine.orders.values()) if o.order_ref == ref]


@pytest.fixture
def champions(models):  # noqa: F811
    """AAPL's champion says P(up) 0.9 (a flat mtf-signal run buys it), TSLA's 0.1."""
    models.champion("AAPL", 0.9)
    models.champion("TSLA", 0.1)
    return models


def flow_events(j: Journal) -> list[tuple]:
    return [tuple(r) for r in j.query("SELECT run_id, event, deployment, outcome FROM flow_events "
                                      "ORDER BY recorded_at").itertuples(index=False)]


# --------------------------------------------------------------------------------------------------------------
# a process killed after its order reached the exchange, before its journal write


@pytest.mark.parametrize("then", ["rerun", "reconciliation"])
def test_killed_after_the_order_reached_the_exchange(exchange, prefect_harness, monkeypatch, then):
    """The exchange SIGKILLs the flow's process the moment it has accepted the entry order, before acknowledging
    it: the process dies with the order sent, filled at the exchange, and journaled only as 'Created'."""
    AdminClient(exchange.admin_port).set_clock(ENTRY)
    order, before = _killed_at_its_order(exchange, monkeypatch, "ema-entry", ENTRY, ENTRY_REF)
    j = journal()
    if then == "rerun":  # someone reruns it in the UI within the late-run window: same as_of
        out = ema_entry(as_of=ENTRY)
        assert out["rerun"] and out["decision"] == "BUY" and out["filled"] == order.quantity
        assert out["stop"]["order_ref"] == "ema-SMH-20260302-entry-stop"
    AdminClient(exchange.admin_port).set_clock(EVENING)  # (else nobody did: the evening reconciliation finds it)
    state = reconciliation(as_of=EVENING, return_state=True)
    assert state.is_completed(), state.message
    recon = state.result()
    assert recon["breaks"] == []
    if then == "reconciliation":
        assert recon["recorded"]["executions"] == 1  # it was reconciliation that recorded the fill
    _sent_once_and_recorded(exchange, j, ENTRY_REF, "ema")
    assert_nothing_lost(before, journal_rows(j))


def test_mtf_signal_killed_after_its_order_reached_the_exchange(exchange, prefect_harness, monkeypatch, champions):
    AdminClient(exchange.admin_port).set_clock(MTF_AT)
    order, before = _killed_at_its_order(exchange, monkeypatch, "mtf-signal", MTF_AT, MTF_REF)
    out = flow_of("mtf-signal")(as_of=MTF_AT)  # the rerun replays the journaled decision
    aapl = next(r for r in out["decisions"] if r["symbol"] == "AAPL")
    assert aapl["decision"] == "BUY" and aapl["order_ref"] == MTF_REF
    _sent_once_and_recorded(exchange, journal(), MTF_REF, "mtf")
    assert_nothing_lost(before, journal_rows(journal()))


def _killed_at_its_order(ex: PaperExchange, monkeypatch, flow: str, as_of: datetime, ref: str):
    """Run `flow` in a child process that the exchange SIGKILLs on accepting the order `ref`; check what the
    journal holds then (the order 'Created', no fill, the run 'started' only). Returns (the exchange's order, the
    journal's rows)."""
    child = None
    accepted = on_order_accepted(ex, monkeypatch, ref, lambda order: os.kill(child.pid, signal.SIGKILL))
    child = flow_process(flow, as_of)
    assert child.killed() == -signal.SIGKILL
    [order] = accepted
    assert orders_at_exchange(ex, ref) == [order] and order.status == "Filled"
    j = journal()
    [(status, qty)] = j.query("SELECT status, quantity FROM orders WHERE order_ref = ?", [ref]).itertuples(
        index=False)
    assert status == "Created" and qty == order.quantity  # journaled before sending; nothing after
    assert j.query("SELECT count(*) AS n FROM executions")["n"][0] == 0
    assert [e[1] for e in flow_events(j)] == ["started"]  # the process died: no 'completed', no 'failed'
    return order, journal_rows(j)


def _sent_once_and_recorded(ex: PaperExchange, j: Journal, ref: str, strategy: str) -> None:
    """One order `ref` and one BUY at the exchange; its fill journaled as the exchange made it; order Filled."""
    assert len(orders_at_exchange(ex, ref)) == 1  # never a second order
    assert len([o for o in list(ex.engine.orders.values()) if o.action == "BUY"]) == 1
    [fill] = [e for e in ex.engine.executions if e.order_ref == ref]
    rows = j.query("SELECT exec_id, order_ref, strategy, shares, price, commission FROM executions "
                   "WHERE order_ref = ?", [ref])
    assert list(rows["exec_id"]) == [fill.exec_id] and rows["strategy"][0] == strategy
    assert rows["shares"][0] == fill.shares and rows["price"][0] == fill.price
    assert rows["commission"][0] == pytest.approx(fill.commission)
    assert j.query("SELECT status FROM orders WHERE order_ref = ?", [ref])["status"][0] == "Filled"


# --------------------------------------------------------------------------------------------------------------
# the exchange drops the connection in the middle of a flow


def entry_done_once(ex: PaperExchange, j: Journal) -> None:
    """One entry order and one protective stop at the exchange, the fill journaled as the exchange made it, the
    run journaled 'completed'."""
    assert len(orders_at_exchange(ex, ENTRY_REF)) == 1
    assert len(orders_at_exchange(ex, ENTRY_REF + "-stop")) == 1
    assert len([o for o in list(ex.engine.orders.values()) if o.action == "BUY"]) == 1
    fills = {(e.exec_id, e.shares, e.price) for e in ex.engine.executions}
    journaled = {tuple(r) for r in j.query("SELECT exec_id, shares, price FROM executions").itertuples(index=False)}
    assert journaled == fills and len(fills) == 1
    assert j.query("SELECT status FROM orders WHERE order_ref = ?", [ENTRY_REF])["status"][0] == "Filled"
    assert [e[1] for e in flow_events(j)] == ["started", "completed"]


DROP_POINTS = {
    # name: (TWS message id of the request during which the link breaks, which one)
    "the first clock read (lateness)": (49, lambda ex, f: True),
    "the SMH quote of the decision": (1, lambda ex, f: "SMH" in f),
    "the what-if of the entry (margin)": (3, lambda ex, f: not orders_at_exchange(ex, ENTRY_REF)),
    "the executions read after the order (its fill)": (7, lambda ex, f: bool(orders_at_exchange(ex, ENTRY_REF))),
    "the open orders read before the stop": (16, lambda ex, f: bool(orders_at_exchange(ex, ENTRY_REF))),
}


@pytest.mark.parametrize("point", list(DROP_POINTS))
def test_a_dropped_connection_is_read_again_and_the_flow_completes(exchange, prefect_harness, monkeypatch,
                                                                   point):
    """Every broker request that reads is asked again once on a new connection: the flow goes on."""
    AdminClient(exchange.admin_port).set_clock(ENTRY)
    msg, which = DROP_POINTS[point]
    fired = on_request(exchange, monkeypatch, msg, drop(exchange), lambda f: which(exchange, f))
    out = ema_entry(as_of=ENTRY)
    assert fired, f"the drop at {point} never happened"
    assert out["decision"] == "BUY" and out["filled"] > 0 and out["stop"]["status"] == "Submitted"
    entry_done_once(exchange, journal())


def test_a_connection_dropped_before_the_orders_acknowledgement(exchange, prefect_harness, monkeypatch):
    """The link breaks right after the exchange accepted the entry order, before it acknowledged it: the broker
    reconnects and finds the order by its orderRef, never sending it again."""
    AdminClient(exchange.admin_port).set_clock(ENTRY)
    accepted = on_order_accepted(exchange, monkeypatch, ENTRY_REF,
                                 lambda order: exchange.drop_connections(order.client_id))
    out = ema_entry(as_of=ENTRY)
    assert len(accepted) == 1 and out["filled"] == accepted[0].quantity
    entry_done_once(exchange, journal())


def test_the_gateway_restarting_in_the_middle_of_a_flow(exchange, prefect_harness, monkeypatch, tmp_path):
    """The exchange goes away right after accepting the entry order (as IB Gateway's daily restart would): the
    flow fails naming host and port, with the order journaled; once the exchange is back, a rerun sends nothing
    new, journals the fill and arms the stop."""
    AdminClient(exchange.admin_port).set_clock(ENTRY)
    port = exchange.port

    def gateway_down(order) -> None:
        exchange.drop_connections(order.client_id)
        exchange.request_stop()

    on_order_accepted(exchange, monkeypatch, ENTRY_REF, gateway_down)
    state = ema_entry(as_of=ENTRY, return_state=True)
    assert state.type == StateType.FAILED
    j = journal()
    [(_, event, _, outcome)] = [e for e in flow_events(j) if e[1] != "started"]
    assert event == "failed" and f"127.0.0.1:{port}" in outcome and ENTRY_REF in outcome, outcome
    assert j.query("SELECT status FROM orders WHERE order_ref = ?", [ENTRY_REF])["status"][0] == "Created"
    exchange.stop()
    before = journal_rows(j)

    back = PaperExchange(exchange.market.root, start=ENTRY, port=port, state_file=tmp_path / "paper-exchange.json")
    back.start()
    try:
        assert [o.status for o in orders_at_exchange(back, ENTRY_REF)] == ["Filled"]  # filled before it went down
        out = ema_entry(as_of=ENTRY)
        assert out["rerun"] and out["filled"] > 0 and out["stop"]["status"] == "Submitted"
        assert len(orders_at_exchange(back, ENTRY_REF)) == 1 and len(orders_at_exchange(back, ENTRY_REF + "-stop")) == 1
        assert len([o for o in back.engine.orders.values() if o.action == "BUY"]) == 1
        assert j.query("SELECT count(*) AS n FROM executions")["n"][0] == 1
        assert_nothing_lost(before, journal_rows(j))
    finally:
        back.stop()


# --------------------------------------------------------------------------------------------------------------
# no exchange at all

NO_EXCHANGE_RUNS = {
    "equity-snapshot": datetime(2026, 3, 2, 9, 30, tzinfo=NY),
    "mtf-signal": MTF_AT,
    "ema-entry": ENTRY,
    "ema-update": datetime(2026, 3, 2, 16, 0, tzinfo=NY),
    "reconciliation": EVENING,
}


@pytest.mark.parametrize("name", list(NO_EXCHANGE_RUNS))
def test_no_exchange_at_all_fails_naming_host_and_port(state_dir, prefect_harness, monkeypatch, champions, name):
    port = closed_port()
    monkeypatch.setenv("IBKR_HOST", "127.0.0.1")
    monkeypatch.setenv("IBKR_PORT", str(port))
    state = flow_of(name)(as_of=NO_EXCHANGE_RUNS[name], return_state=True)
    assert state.type == StateType.FAILED
    assert f"127.0.0.1:{port}" in state.message and "BrokerConnectionError" in state.message, state.message
    j = journal()
    events = j.query("SELECT event, deployment, outcome FROM flow_events ORDER BY recorded_at")
    assert list(events["event"]) == ["started", "failed"] and set(events["deployment"]) == {name}
    assert f"127.0.0.1:{port}" in events["outcome"][1] and "could not connect" in events["outcome"][1]
    for table in ("orders", "signals", "executions", "equity_snapshots", "ema_state"):
        assert j.query(f"SELECT count(*) AS n FROM {table}")["n"][0] == 0, table


# --------------------------------------------------------------------------------------------------------------
# a run started long after its scheduled time (the server was down, then came back)

LATE_RUNS = {
    # deployment: (scheduled start, the exchange's clock when the run finally starts)
    "equity-snapshot": (datetime(2026, 3, 2, 9, 30, tzinfo=NY), datetime(2026, 3, 2, 10, 10, tzinfo=NY)),
    "ema-entry": (ENTRY, ENTRY + timedelta(minutes=40)),
    "mtf-signal": (MTF_AT, MTF_AT + timedelta(minutes=40)),
}


@pytest.mark.parametrize("name", list(LATE_RUNS))
def test_a_run_started_long_after_its_scheduled_time_trades_nothing(exchange, prefect_harness, champions, name):
    """A flow run scheduled for `scheduled` and left Late in the API, executed 40 minutes later with no `as_of`
    (so the scheduled start is its as_of, as for every scheduled run): SkippedLate, nothing sent or decided."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow
    from prefect.states import Late

    scheduled, now = LATE_RUNS[name]
    AdminClient(exchange.admin_port).set_clock(now)
    flow = flow_of(name)
    with get_client(sync_client=True) as client:
        created = client.create_flow_run(flow, state=Late(scheduled_time=scheduled))
    state = run_flow(flow, flow_run=created, return_type="state")
    assert state.type == StateType.COMPLETED and state.name == "SkippedLate"
    assert "40.0 minutes after its scheduled time" in state.message
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(created.id).state.name == "SkippedLate"
    j = journal()
    events = j.query("SELECT run_id, event, as_of, outcome FROM flow_events ORDER BY recorded_at")
    assert list(events["event"]) == ["started", "skipped"] and set(events["run_id"]) == {str(created.id)}
    assert events["as_of"][0] == scheduled and "40.0 minutes after its scheduled time" in events["outcome"][1]
    assert not exchange.engine.orders
    for table in ("orders", "signals", "equity_snapshots", "ema_state", "position_snapshots"):
        assert j.query(f"SELECT count(*) AS n FROM {table}")["n"][0] == 0, table


# --------------------------------------------------------------------------------------------------------------
# a person holding a SQL session on the journal while three flows write

CONCURRENT = ("ema-entry", "mtf-signal", "reconciliation")
"""Flows that write at the same moment (15:55), each in its own process as every Prefect flow run is (a person
runs the reconciliation by hand)."""


def test_a_held_sql_session_while_three_flows_write(exchange, prefect_harness, champions):
    """A Python session and a DuckDB CLI session stay open on the read snapshot, and `tradeflow sql` queries it
    again and again, while three flow processes write: no flow fails, every row they wrote is there, the held
    sessions keep the view they opened with, each new query sees at least what the one before saw, and a
    session opened afterwards sees every row."""
    import duckdb

    AdminClient(exchange.admin_port).set_clock(ENTRY)
    j = journal()
    j.ensure()
    held = duckdb.connect(str(j.snapshot_path), read_only=True)
    count_sql = "SELECT count(*) AS n FROM flow_events"
    cli = subprocess.Popen([str(Path(sys.executable).with_name("duckdb")), "-readonly", "-csv", str(j.snapshot_path)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cli.stdin.write(f"{count_sql};\n")
    cli.stdin.flush()
    try:
        assert held.execute(count_sql).fetchone()[0] == 0
        children = [flow_process(name, ENTRY) for name in CONCURRENT]
        seen: list[int] = []
        tradeflow = Path(sys.executable).with_name("tradeflow")
        while any(c.proc.poll() is None for c in children):
            out = subprocess.run([str(tradeflow), "sql", count_sql, "--format", "json"], capture_output=True,
                                 text=True, timeout=120)
            assert out.returncode == 0, out.stderr
            seen.append(json.loads(out.stdout)[0]["n"])
            held.execute("SELECT * FROM v_latest_signals").fetchall()  # the held session keeps working
        results = {c.flow: c.result() for c in children}
        assert held.execute(count_sql).fetchone()[0] == 0  # its view never changed under it
    finally:
        held.close()
        cli_out, cli_err = cli.communicate(f"{count_sql};\n", timeout=60)
    assert cli.returncode == 0, cli_err
    assert cli_out.split() == ["n", "0", "n", "0"]  # the CLI session, open throughout, kept its view
    assert seen == sorted(seen), seen  # each new query saw at least what the one before saw

    for name, res in results.items():
        assert res["type"] == "COMPLETED", (name, res)
    events = j.query("SELECT run_id, deployment, event FROM flow_events")
    for name, res in results.items():
        mine = events[events["run_id"] == res["run_id"]]
        assert sorted(mine["event"]) == ["completed", "started"] and set(mine["deployment"]) == {name}
    assert len(events) == 2 * len(CONCURRENT)
    # a session opened now (what `tradeflow sql --path` prints, after bringing the snapshot up to date) sees them
    j.sync()
    reopened = subprocess.run([str(Path(sys.executable).with_name("duckdb")), "-readonly", "-csv",
                               str(j.snapshot_path), "-c", count_sql], capture_output=True, text=True, timeout=60)
    assert reopened.stdout.split() == ["n", str(2 * len(CONCURRENT))], reopened.stderr
    # every order and fill the exchange holds is journaled, with the decisions behind them
    exchange_orders = {o.order_ref for o in list(exchange.engine.orders.values())}
    assert ENTRY_REF in exchange_orders
    assert exchange_orders <= set(j.query("SELECT order_ref FROM orders")["order_ref"])
    fills = {e.exec_id for e in exchange.engine.executions}
    assert fills == set(j.query("SELECT exec_id FROM executions")["exec_id"])
    assert set(j.query("SELECT strategy FROM signals")["strategy"]) == {"ema", "ema_stop", "mtf"}
    mtf = j.query("SELECT symbol, decision, order_ref FROM signals WHERE strategy = 'mtf' ORDER BY symbol")
    assert list(mtf["decision"]) == ["BUY", "NO_TRADE"] and mtf["order_ref"][0] in exchange_orders
    assert results["reconciliation"]["result"]["breaks"] == []  # whatever it saw mid-way, nothing disagreed
