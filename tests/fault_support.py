"""Helpers of the fault tests (tests/test_faults*.py): faults injected at an exact point of the exchange's work,
flows run in child processes, and the journal compared before and after.

- `on_order_accepted(exchange, monkeypatch, ref, action)`: calls `action(order)` on the exchange's loop the moment
  the in-process paper exchange has accepted (and saved) the order with orderRef `ref`, BEFORE it acknowledges
  it to the client or fills it. `action` may SIGKILL the client process or abort its connection: the client
  never hears of its order, exactly as when a process dies or a link breaks right after sending.
- `on_request(exchange, monkeypatch, msg_id, action, when)`: calls `action(conn)` before the exchange handles a
  TWS request with that message id (20 historical data, 1 market data, 7 executions, 6 account updates ...);
  when `action` returns True the request is not handled (the connection was dropped).
- `flow_process(flow, as_of)`: runs one flow in a child process (`tests/fault_workers.py`) against the same
  exchange, state dir and Prefect API as the test (the environment plus PREFECT_API_URL).
- `journal_rows(journal)` / `assert_nothing_lost(before, after)`: every row of every table, minus the columns
  that are meant to change (an order's latest status, a commission filled in later ...).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from core.journal import Journal
from core.paper_exchange import PaperExchange

ROOT = Path(__file__).resolve().parents[1]

MUTABLE_COLUMNS = {
    "orders": {"perm_id", "order_id", "status", "updated_at"},
    "executions": {"commission", "realized_pnl"},
    "models": {"status", "updated_at"},
    "position_breaks": {"resolved_at", "resolved_by", "resolution"},
}
"""Columns a later write may fill in or move forward (never a row's identity or what was decided)."""


def on_order_accepted(exchange: PaperExchange, monkeypatch: pytest.MonkeyPatch, ref: str,
                      action: Callable[[Any], None]) -> list[Any]:
    """Run `action(order)` right after the exchange accepted the order with orderRef `ref` (see the module
    docstring). Returns the list the accepted orders are appended to."""
    engine = exchange.engine
    original = engine.place
    seen: list[Any] = []

    def place(**kwargs):
        order = original(**kwargs)
        if order.order_ref == ref:
            seen.append(order)
            action(order)
        return order

    monkeypatch.setattr(engine, "place", place)
    return seen


def on_request(exchange: PaperExchange, monkeypatch: pytest.MonkeyPatch, msg_id: int,
               action: Callable[[Any], bool], when: Callable[[list[str]], bool] = lambda f: True) -> list[Any]:
    """Run `action(conn)` before the exchange handles a request with TWS message id `msg_id` whose fields
    satisfy `when(fields)`, once; the request is dropped when `action` returns True. Returns the list of the
    connections it fired on."""
    original = exchange._dispatch
    fired: list[Any] = []

    def dispatch(conn, fields):
        if not fired and int(fields[0]) == msg_id and when(fields):
            fired.append(conn)
            if action(conn):
                return False
        return original(conn, fields)

    monkeypatch.setattr(exchange, "_dispatch", dispatch)
    return fired


def drop(exchange: PaperExchange) -> Callable[[Any], bool]:
    """An action that aborts the client's connection (as AdminClient.drop does) and swallows the request."""
    def action(conn) -> bool:
        exchange.drop_connections(conn.client_id)
        return True
    return action


def prefect_env() -> dict[str, str]:
    """This process's environment plus the Prefect API it uses (the test harness sets it in settings only)."""
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ)
    url = PREFECT_API_URL.value()
    if url:
        env["PREFECT_API_URL"] = url
    return env


@dataclass
class FlowProcess:
    """A flow run in a child process; `result()` waits and returns what `tests/fault_workers.py` printed."""

    proc: subprocess.Popen
    flow: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def result(self, timeout: float = 180.0) -> dict[str, Any]:
        out, err = self.proc.communicate(timeout=timeout)
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if self.proc.returncode != 0 or not lines:
            raise AssertionError(f"{self.flow} child exited {self.proc.returncode}:\n{out[-3000:]}\n{err[-3000:]}")
        return json.loads(lines[-1])

    def killed(self, timeout: float = 60.0) -> int:
        """Wait for a child that was killed; returns its (negative) return code."""
        self.proc.communicate(timeout=timeout)
        return self.proc.returncode


def flow_process(flow: str, as_of: datetime, env: dict[str, str] | None = None) -> FlowProcess:
    """Start `python -m tests.fault_workers FLOW AS_OF` (the flow as a real Prefect flow run)."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.fault_workers", flow, as_of.isoformat()], cwd=ROOT,
                            env=env if env is not None else prefect_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    return FlowProcess(proc, flow)


def journal_rows(journal: Journal) -> dict[str, set[tuple]]:
    """Every base table's rows (as tuples of the columns not in MUTABLE_COLUMNS), read from the live file
    inside the writer lock."""
    out: dict[str, set[tuple]] = {}
    with journal.transaction() as tx:
        tables = [r[0] for r in tx.fetch("SELECT table_name FROM information_schema.tables "
                                         "WHERE table_type = 'BASE TABLE' ORDER BY table_name")]
        for table in tables:
            columns = [r[0] for r in tx.fetch("SELECT column_name FROM information_schema.columns WHERE "
                                              "table_name = ? ORDER BY ordinal_position", [table])]
            keep = [c for c in columns if c not in MUTABLE_COLUMNS.get(table, set())]
            out[table] = {tuple(r) for r in tx.fetch(f"SELECT {', '.join(keep)} FROM {table}")}
    return out


def assert_nothing_lost(before: dict[str, set[tuple]], after: dict[str, set[tuple]]) -> None:
    """Every row recorded before is still there after (tables may only grow)."""
    for table, rows in before.items():
        lost = rows - after.get(table, set())
        assert not lost, f"{table}: {len(lost)} row(s) lost, e.g. {sorted(lost, key=str)[:2]}"


def damaged_data_dir(source: Path, target: Path, edits: dict[str, Callable[[Any], Any]]) -> Path:
    """A bars folder at `target` built from the real one at `source`: every file is a symbolic link to the real
    file except those named in `edits` ("5m/SMH.csv": fn), which are written as `fn(frame)` of the real CSV read
    as plain text columns (a few rows altered or removed). Never inside the repository."""
    import pandas as pd

    for sub in ("daily", "1h", "5m"):
        (target / sub).mkdir(parents=True, exist_ok=True)
        for real in sorted((source / sub).glob("*.csv")):
            name = f"{sub}/{real.name}"
            if name in edits:
                frame = pd.read_csv(real, dtype={"timestamp": str})
                edits[name](frame).to_csv(target / name, index=False)
            else:
                (target / name).symlink_to(real.resolve())
    return target


def start_exchange(data_dir: Path, start: datetime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                   ) -> PaperExchange:
    """A paper exchange on `data_dir` (as the `exchange` fixture, for another bars folder), with IBKR_HOST,
    IBKR_PORT and TRADEFLOW_DATA_DIR exported. The caller stops it."""
    ex = PaperExchange(data_dir, start=start, state_file=tmp_path / "paper-exchange.json").start()
    monkeypatch.setenv("IBKR_HOST", "127.0.0.1")
    monkeypatch.setenv("IBKR_PORT", str(ex.port))
    monkeypatch.setenv("TRADEFLOW_DATA_DIR", str(data_dir))
    return ex


def serve_altered_history(exchange: PaperExchange, monkeypatch: pytest.MonkeyPatch, symbol: str, bar_size: str,
                          alter: Callable[[list[tuple]], list[tuple]]) -> None:
    """Make the exchange answer historical requests for (`symbol`, `bar_size`) with `alter(bars)`: bars as the
    exchange's MarketData.history gives them, (start, session, open, high, low, close, volume) tuples. For bad
    values the exchange itself refuses to load from a file (it checks its bars like core.bars does)."""
    market = exchange.market
    original = market.history

    def history(sym: str, size: str, end: int, duration: str):
        bars = original(sym, size, end, duration)
        return alter(bars) if (sym.upper(), size) == (symbol, bar_size) else bars

    monkeypatch.setattr(market, "history", history)
