"""The journal's writer process and its read snapshot: older files, kills, full disks, corrupt files, people's SQL."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
import shutil
import signal
import time
from pathlib import Path

import duckdb
import pytest

from core.calendar import NY
from core.journal import SCHEMA_VERSION, Journal, JournalError
from deployments.cli import main

T0 = dt.datetime(2026, 3, 2, 9, 35, tzinfo=NY)
DAY = T0.date()
FIXTURE = Path(__file__).parent / "fixtures" / "journal-before-issue-14.duckdb.gz"


def _writer_pid(journal: Journal) -> int:
    return int(json.loads(journal.files.server_info.read_text())["pid"])


def _gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # our own child only when started by this process; else it is reaped by init
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    return False


def _signal(journal: Journal, n: int, reason: str = "test") -> None:
    with journal.transaction() as tx:
        assert tx.record_signal("mtf", "AAPL", T0 + dt.timedelta(minutes=5 * n), DAY, "NO_TRADE", reason)


def test_reading_a_journal_that_does_not_exist_says_so_and_creates_nothing(tmp_path):
    journal = Journal(tmp_path / "state" / "journal.duckdb")
    with pytest.raises(JournalError, match="no journal at"):
        journal.query("SELECT 1")
    assert not (tmp_path / "state").exists()


def test_a_journal_written_by_the_release_before_migrates_forward_with_every_row(tmp_path):
    path = tmp_path / "journal.duckdb"
    with gzip.open(FIXTURE) as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    journal = Journal(path)
    counts = journal.query(
        "SELECT (SELECT count(*) FROM equity_snapshots) e, (SELECT count(*) FROM orders) o,"
        " (SELECT count(*) FROM order_events) oe, (SELECT count(*) FROM executions) x,"
        " (SELECT count(*) FROM position_snapshots) p, (SELECT count(*) FROM signals) s,"
        " (SELECT count(*) FROM ema_state) em, (SELECT count(*) FROM models) m,"
        " (SELECT count(*) FROM model_metrics) mm, (SELECT count(*) FROM flow_events) f,"
        " (SELECT count(*) FROM controls) c, (SELECT count(*) FROM position_breaks) b,"
        " (SELECT count(*) FROM position_adjustments) a, (SELECT count(*) FROM daily_pnl) d,"
        " (SELECT count(*) FROM model_allowances) ma"
    ).iloc[0].to_dict()
    assert counts == {"e": 2, "o": 1, "oe": 2, "x": 2, "p": 1, "s": 1, "em": 1, "m": 1, "mm": 1, "f": 1,
                      "c": 2, "b": 1, "a": 1, "d": 1, "ma": 1}
    assert journal.query("SELECT max(version) AS v FROM schema_version")["v"][0] == SCHEMA_VERSION
    with journal.transaction() as tx:
        assert tx.day_start_equity(DAY) == 1_000_000.0
        assert tx.order("ema-SMH-2026-03-02-entry")["status"] == "Filled"
        assert tx.fills_of("ema-SMH-2026-03-02-entry") == [(100.0, 250.0, 1.0)]
        assert tx.signal("ema", "SMH", T0)["inputs"] == {"ema_fast": 1.0}
        assert tx.model_allowance("AAPL")["allowed"] is True
    trips = journal.query("SELECT gross_pnl, net_pnl FROM v_round_trips")
    assert trips.to_dict("records") == [{"gross_pnl": 500.0, "net_pnl": 498.0}]
    done = journal.query("SELECT status FROM order_statuses WHERE done ORDER BY status")["status"].tolist()
    assert done == ["ApiCancelled", "Cancelled", "Filled", "Inactive"]


def test_a_killed_writer_loses_no_committed_write_and_leaves_no_stale_snapshot(tmp_path):
    journal = Journal(tmp_path / "journal.duckdb")
    for n in range(5):
        _signal(journal, n)
    pid = _writer_pid(journal)
    os.kill(pid, signal.SIGKILL)  # committed, maybe not yet in the snapshot: a SIGKILL at any point
    assert _gone(pid)
    for n in range(5, 8):  # the next write starts a new writer, which replays the write-ahead log
        _signal(journal, n)
    assert _writer_pid(journal) != pid
    assert journal.query("SELECT count(*) AS n FROM signals")["n"][0] == 8
    pid = _writer_pid(journal)
    _signal(journal, 8)
    os.kill(pid, signal.SIGKILL)
    assert _gone(pid)
    # no writer runs now, and the snapshot may lack the last write: a reader brings it forward, never answers old
    assert journal.query("SELECT count(*) AS n FROM signals")["n"][0] == 9
    assert not list(tmp_path.glob("*.tmp"))


def test_a_full_disk_during_the_snapshot_copy_fails_no_committed_write(tmp_path):
    journal = Journal(tmp_path / "journal.duckdb")
    _signal(journal, 0)
    journal.sync()
    pid = _writer_pid(journal)
    blocker = journal.snapshot_path.with_name(journal.snapshot_path.name + f".{pid}.tmp")
    blocker.mkdir()  # the writer's copy cannot be written (as with ENOSPC): an OSError in the copy
    try:
        _signal(journal, 1, "committed while the copy fails")  # the write itself succeeds
        with pytest.raises(JournalError, match="could not be refreshed"):
            journal.sync(timeout=30)
        with pytest.raises(JournalError, match="could not be refreshed"):
            journal.query("SELECT count(*) FROM signals")  # no answer from the older snapshot
    finally:
        blocker.rmdir()
    assert journal.query("SELECT count(*) AS n FROM signals")["n"][0] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_sql_never_answers_from_the_snapshot_while_the_live_file_is_corrupt(state_dir, capsys):
    journal = Journal(state_dir / "journal.duckdb")
    _signal(journal, 0)
    journal.stop_writer()
    with open(journal.path, "r+b") as f:  # the database headers: the file no longer opens
        f.seek(0)
        f.write(b"\0" * 12288)
    assert main(["sql", "SELECT count(*) AS n FROM signals"]) == 1
    assert "cannot open" in capsys.readouterr().err


def test_a_person_opening_the_live_file_is_told_which_process_holds_it(tmp_path):
    journal = Journal(tmp_path / "journal.duckdb")
    _signal(journal, 0)
    pid = _writer_pid(journal)
    with pytest.raises(duckdb.IOException, match=f"PID {pid}"):
        duckdb.connect(str(journal.path), read_only=True)
    _signal(journal, 1)  # and the writer goes on


@pytest.mark.parametrize("sql", [
    "ATTACH '{dir}/other.duckdb' AS other",
    "COPY signals TO '{dir}/out.csv'",
    "SELECT * FROM read_csv('/etc/passwd')",
    "INSTALL sqlite",
    "LOAD sqlite",
    "SET enable_external_access = true",
    "CREATE TABLE t AS SELECT 1",
    "DELETE FROM signals",
])
def test_sql_is_read_only_in_fact(state_dir, capsys, sql):
    journal = Journal(state_dir / "journal.duckdb")
    _signal(journal, 0)
    journal.sync()
    before = sorted(p.name for p in state_dir.iterdir())
    assert main(["sql", sql.format(dir=state_dir)]) == 1
    err = capsys.readouterr().err
    assert "tradeflow sql:" in err and ("refused" in err or "Catalog" in err or "read-only" in err), err
    assert sorted(p.name for p in state_dir.iterdir()) == before
    assert journal.query("SELECT count(*) AS n FROM signals")["n"][0] == 1


def test_the_tables_the_writes_keep_agree_with_the_fills(tmp_path):
    """round_trips and pnl_by_symbol_day after fills in and out of order, a late commission, and fills recorded
    before their order: what the walk over every fill gives (v_round_trips_computed), at every step."""
    journal = Journal(tmp_path / "journal.duckdb")

    def fill(exec_id, symbol, side, shares, price, minutes, **kw):
        with journal.transaction() as tx:
            tx.record_execution(exec_id, symbol=symbol, side=side, shares=shares, price=price,
                                exec_time=T0 + dt.timedelta(minutes=minutes), **kw)

    def agree():
        drift = journal.query("(SELECT * FROM round_trips EXCEPT SELECT * FROM v_round_trips_computed) UNION ALL"
                              " (SELECT * FROM v_round_trips_computed EXCEPT SELECT * FROM round_trips)")
        assert drift.empty, drift
        costs = journal.query(
            "SELECT strategy_name AS strategy, session, sum(coalesce(commission, 0)) AS c, count(*) AS n"
            " FROM v_fills GROUP BY ALL EXCEPT SELECT strategy, session, commissions, fills FROM v_daily_pnl")
        assert costs.empty, costs

    fill("a1", "AAPL", "BOT", 10, 100.0, 0, strategy="mtf", commission=1.0)
    fill("a2", "AAPL", "SLD", 10, 101.0, 30, strategy="mtf")  # its commission comes later
    agree()
    fill("a2", "AAPL", "SLD", 10, 101.0, 30, strategy="mtf", commission=1.5)
    fill("t1", "TSLA", "SLD", 5, 200.0, 10, order_ref="mtf-TSLA-short")  # a short; its order comes later
    agree()
    with journal.transaction() as tx:
        tx.record_order("mtf-TSLA-short", strategy="mtf", symbol="TSLA", intent="entry", action="SELL", quantity=5,
                        order_type="MKT", session=DAY, as_of=T0)
    fill("t2", "TSLA", "BOT", 5, 190.0, 20, strategy="mtf")
    fill("a0", "AAPL", "BOT", 4, 99.0, -5, strategy="mtf")  # a late fill before the others: trips renumber
    agree()
    trips = journal.query("SELECT symbol, direction, closed, coalesce(gross_pnl, 0) AS gross_pnl FROM v_round_trips"
                          " ORDER BY entry_time")
    assert trips.to_dict("records") == [  # AAPL: 4 + 10 bought, 10 sold: one trip, still open
        {"symbol": "AAPL", "direction": "long", "closed": False, "gross_pnl": 0.0},
        {"symbol": "TSLA", "direction": "short", "closed": True, "gross_pnl": 50.0}]
    opened = journal.query("SELECT symbol, quantity FROM v_open_positions")
    assert opened.to_dict("records") == [{"symbol": "AAPL", "quantity": 4.0}]
