"""No filled entry without its stop (issue 19, finding 2): the real `ema-entry` flow (a real Prefect flow run,
the production IBBroker, a real DuckDB journal) against the paper exchange, with another process taking the
journal's DuckDB file lock (as a person with the DuckDB CLI on the live journal does) the moment the exchange
accepted the entry order.

2026-03-02 is BULL at 15:55 (tests/test_faults.py): a flat account buys SMH at market.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime

import pytest

from core.calendar import NY
from core.journal import Journal
from core.orders import JournalBehindError
from core.paper_exchange import AdminClient
from core.settings import get_settings
from flows.ema_entry import ema_entry
from tests.fault_support import on_order_accepted


ENTRY = datetime(2026, 3, 2, 15, 55, tzinfo=NY)
ENTRY_REF = "ema-SMH-20260302-entry"
STOP_REF = "ema-SMH-20260302-entry-stop"

HOLD = ("import duckdb, sys\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "con = duckdb.connect(sys.argv[1])\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n")


class JournalHolder:
    """Another process that takes the live journal's DuckDB file lock on `hold()`, until `release()`.

    The process is started (Python and DuckDB imported) before the lock is wanted: started inside the exchange's
    order callback, on a loaded machine, it outlasts the client's 15 s wait for the order's acknowledgement.
    `hold()` first stops the journal's writer process, which holds the file while it runs (issue 14): a person's
    DuckDB CLI gets the live file only between writers (after the writer crashed or exited idle), and then every
    write fails until the person lets go, which is what the order path must survive."""

    def __init__(self, path) -> None:
        self.path = path
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        assert line == "ready", f"the journal holder did not start: {line!r}"
        self.held = False

    def hold(self) -> str:
        """Stop the writer, take the file; returns the holder's answer ("held")."""
        Journal(self.path).stop_writer()
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().strip()
        assert line == "held", f"the journal holder could not take the file: {line!r}"
        self.held = True
        return line

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(30)


@pytest.fixture
def held_journal(exchange, prefect_harness, monkeypatch):
    """Sets the exchange clock to 15:55 and, when the exchange accepts `ENTRY_REF`, holds the journal. Yields the
    holder (released at the end whatever happens); `holder.held` says whether it took the file."""
    monkeypatch.setenv("TRADEFLOW_JOURNAL_LOCK_TIMEOUT_SECONDS", "2")
    monkeypatch.setenv("TRADEFLOW_EMA_FILL_TIMEOUT_SECONDS", "10")
    get_settings.cache_clear()
    AdminClient(exchange.admin_port).set_clock(ENTRY)
    holder = JournalHolder(get_settings().journal_path)
    on_order_accepted(exchange, monkeypatch, ENTRY_REF, lambda order: holder.hold())
    try:
        yield holder
    finally:
        holder.release()


def _stops(exchange) -> list:
    return [o for o in exchange.engine.open_orders() if o.order_type == "STP" and o.action == "SELL"]


def test_a_journal_held_after_the_entry_was_sent_still_leaves_the_position_with_its_stop(exchange, held_journal):
    state = ema_entry(as_of=ENTRY, return_state=True)
    assert held_journal.held, "the journal was never held: the entry did not reach the exchange"
    assert state.is_failed()
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, JournalBehindError)
    first = str(exc).splitlines()[0]
    held = exchange.engine.positions["SMH"].quantity
    assert held > 0
    [stop] = _stops(exchange)  # the position's stop is at the exchange
    assert (stop.order_ref, stop.quantity, stop.tif) == (STOP_REF, held, "GTC")
    # the first line (the alert's) says what was sent and what protects it
    assert first.startswith(f"ORDERS SENT, JOURNAL BEHIND: sent BUY {held:g} SMH (ema entry, ref {ENTRY_REF}): "
                            f"Filled {held:g} at "), first
    assert f"SMH: {held:g} shares held, protected by {STOP_REF} STP SELL {held:g} at {stop.aux_price:.2f}" in first
    assert "could not be written" in str(exc) and "execution(s) of " + ENTRY_REF in str(exc)
    assert "JournalBehindError: ORDERS SENT, JOURNAL BEHIND" in state.message

    held_journal.release()  # the person closes the CLI
    j = Journal(get_settings().journal_path)
    assert j.query("SELECT status FROM orders WHERE order_ref = ?", [ENTRY_REF])["status"][0] == "Created"
    again = ema_entry(as_of=ENTRY, return_state=True)  # a rerun with the same as_of journals it, sends nothing
    assert again.is_completed(), again.message
    assert len([o for o in exchange.engine.orders.values() if o.action == "BUY"]) == 1
    assert [s.order_ref for s in _stops(exchange)] == [STOP_REF]
    rows = j.query("SELECT order_ref, status FROM orders ORDER BY order_ref").itertuples(index=False)
    assert [tuple(r) for r in rows] == [(ENTRY_REF, "Filled"), (STOP_REF, "Submitted")]
    assert j.query("SELECT sum(shares) AS n FROM executions WHERE order_ref = ?", [ENTRY_REF])["n"][0] == held


def test_writes_kept_while_the_journal_was_held_are_written_when_it_is_back(exchange, held_journal, monkeypatch):
    def release(order) -> None:  # the person closes the CLI once the stop is at the exchange
        held_journal.release()

    on_order_accepted(exchange, monkeypatch, STOP_REF, release)
    state = ema_entry(as_of=ENTRY, return_state=True)
    assert held_journal.held
    assert state.is_completed(), state.message
    held = exchange.engine.positions["SMH"].quantity
    assert [s.order_ref for s in _stops(exchange)] == [STOP_REF]
    j = Journal(get_settings().journal_path)
    rows = j.query("SELECT order_ref, status FROM orders ORDER BY order_ref").itertuples(index=False)
    assert [tuple(r) for r in rows] == [(ENTRY_REF, "Filled"), (STOP_REF, "Submitted")]
    assert j.query("SELECT sum(shares) AS n FROM executions WHERE order_ref = ?", [ENTRY_REF])["n"][0] == held
    stop_signal = j.query("SELECT order_ref FROM signals WHERE strategy = 'ema_stop'")
    assert list(stop_signal["order_ref"]) == [STOP_REF]
