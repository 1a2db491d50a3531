"""The journal and the kill switch of another host (core/journal/remote.py): a journal server that the server role
runs, reached with TRADEFLOW_JOURNAL_SERVER and its token. Here both "hosts" are folders of this machine and the
server listens on loopback; tests/test_hosts_failover.py runs it across network namespaces."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from core.calendar import NY
from core.controls import KillSwitch
from core.journal import Journal, JournalError
from core.journal.server import serve
from core.settings import PROJECT_ROOT
from deployments.processes import free_port, port_open, wait_for

T0 = dt.datetime(2026, 3, 2, 9, 35, tzinfo=NY)
TOKEN = "test-token-7f3a"


@pytest.fixture
def journal_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The server host's journal writer on 127.0.0.1:PORT (never idle-exiting), and this process pointed at it."""
    port = free_port()
    server_dir = tmp_path / "server-host"
    server_dir.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "core.journal.server", str(server_dir / "journal.duckdb"),
                             "--bind", "127.0.0.1", "--port", str(port), "--idle", "0"], cwd=PROJECT_ROOT,
                            env={**_env(), "TRADEFLOW_JOURNAL_TOKEN": TOKEN})
    try:
        wait_for(lambda: port_open("127.0.0.1", port), 60, "the journal server")
        monkeypatch.setenv("TRADEFLOW_JOURNAL_SERVER", f"127.0.0.1:{port}")
        monkeypatch.setenv("TRADEFLOW_JOURNAL_TOKEN", TOKEN)
        yield server_dir, port
    finally:
        proc.terminate()
        proc.wait(30)


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("TRADEFLOW_JOURNAL_")}


def test_a_worker_host_writes_and_reads_the_server_hosts_journal_and_keeps_no_file(journal_server, tmp_path):
    server_dir, _ = journal_server
    worker = Journal(tmp_path / "worker-host" / "journal.duckdb")
    with worker.transaction() as tx:
        tx.record_signal("mtf", "AAPL", T0, T0.date(), "NO_TRADE", "from the worker host")
    assert worker.query("SELECT reason FROM signals")["reason"].tolist() == ["from the worker host"]
    with worker.reader(people=True) as con:  # people's SQL: this host's copy of the server's snapshot
        assert con.execute("SELECT count(*) FROM signals").fetchone()[0] == 1
        with pytest.raises(duckdb.Error):
            con.execute("CREATE TABLE x (a INT)")
    assert not worker.path.exists()  # no journal of its own
    assert (server_dir / "journal.duckdb").exists()
    other = Journal(tmp_path / "another-host" / "journal.duckdb")  # a second worker host sees the same rows
    assert other.query("SELECT count(*) AS n FROM signals")["n"][0] == 1
    with other.transaction() as tx:
        tx.record_signal("mtf", "TSLA", T0, T0.date(), "NO_TRADE", "from another host")
    assert sorted(worker.query("SELECT symbol FROM signals")["symbol"]) == ["AAPL", "TSLA"]


def test_a_halt_on_one_host_stops_orders_on_every_host(journal_server, tmp_path):
    server_dir, _ = journal_server
    here, there = KillSwitch(tmp_path / "host-c"), KillSwitch(tmp_path / "host-b")
    assert there.current() is None
    here.halt(Journal(tmp_path / "host-c" / "journal.duckdb"), "tester", "halt from host c", T0)
    seen = there.current()
    assert seen is not None and seen.who == "tester" and seen.reason == "halt from host c"
    assert (server_dir / "HALT").exists() and not (tmp_path / "host-c" / "HALT").exists()
    lifted = there.resume(Journal(tmp_path / "host-b" / "journal.duckdb"), "tester", "over", T0)
    assert lifted is not None and here.current() is None
    controls = Journal(tmp_path / "x" / "journal.duckdb").query("SELECT action FROM controls")
    assert sorted(controls["action"]) == ["halt", "resume"]


def test_an_unreachable_journal_server_counts_as_a_halt_and_never_falls_back_to_a_local_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TRADEFLOW_JOURNAL_SERVER", f"127.0.0.1:{free_port()}")  # nobody listens
    monkeypatch.setenv("TRADEFLOW_JOURNAL_TOKEN", TOKEN)
    halt = KillSwitch(tmp_path).current()
    assert halt is not None and "cannot be read" in halt.reason  # fail closed: no order leaves
    journal = Journal(tmp_path / "journal.duckdb")
    with pytest.raises(JournalError, match="cannot be reached"):
        with journal.transaction():
            pass
    assert not (tmp_path / "journal.duckdb").exists() and not list(tmp_path.glob("journal.duckdb*"))


def test_the_journal_server_refuses_a_wrong_token_and_an_open_address_without_one(journal_server, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setenv("TRADEFLOW_JOURNAL_TOKEN", "wrong")
    with pytest.raises(JournalError, match="refused this client"):
        with Journal(tmp_path / "journal.duckdb").transaction():
            pass
    with pytest.raises(JournalError, match="needs a token"):
        serve(tmp_path / "open" / "journal.duckdb", 0, bind="0.0.0.0", port=0, token=None)
