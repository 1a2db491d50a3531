"""The DuckDB journal: schema and migrations, idempotent writes, views, and concurrent processes."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing as mp
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

import core.journal as journal_module
from core.calendar import NY
from core.journal import SCHEMA_VERSION, Journal, JournalError
from deployments.cli import main
from tests import journal_workers

T0 = dt.datetime(2026, 3, 2, 9, 35, tzinfo=NY)
DAY = T0.date()


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    return Journal(tmp_path / "journal.duckdb")


def _order(tx, ref="ema-2026-03-02-entry", **kw):
    args = dict(strategy="ema", symbol="SMH", intent="entry", action="BUY", quantity=100, order_type="MKT",
                session=DAY, as_of=T0)
    args.update(kw)
    return tx.record_order(ref, **args)


def test_new_journal_has_the_schema_and_its_version(journal):
    journal.ensure()
    tables = set(journal.query("SELECT table_name FROM information_schema.tables")["table_name"])
    for name in ["equity_snapshots", "orders", "order_events", "executions", "position_snapshots", "signals",
                 "ema_state", "models", "model_metrics", "flow_events", "v_equity_curve", "v_daily_pnl",
                 "v_round_trips", "v_open_positions", "v_latest_signals"]:
        assert name in tables
    assert journal.query("SELECT max(version) AS v FROM schema_version")["v"][0] == SCHEMA_VERSION
    journal.ensure()  # opening again applies nothing twice
    assert len(journal.query("SELECT * FROM schema_version")) == SCHEMA_VERSION


def test_migrates_forward_keeping_data(journal, monkeypatch):
    with journal.transaction() as tx:
        tx.record_signal("mtf", "AAPL", T0, DAY, "NO_TRADE", "below threshold", probability=0.4)
    nxt = journal_module.SCHEMA_VERSION + 1
    step = (nxt, "signals get a note", "ALTER TABLE signals ADD COLUMN note VARCHAR")
    monkeypatch.setattr(journal_module, "MIGRATIONS", (*journal_module.MIGRATIONS, step))
    monkeypatch.setattr(journal_module, "SCHEMA_VERSION", nxt)
    journal.stop_writer()  # the writer runs this code's migrations: here the patched ones, in this process
    with journal.bulk():
        pass
    frame = journal.query("SELECT reason, note FROM signals")
    assert list(frame["reason"]) == ["below threshold"]
    assert journal.query("SELECT max(version) AS v FROM schema_version")["v"][0] == nxt


def test_refuses_a_journal_newer_than_the_code(journal):
    journal.ensure()
    journal.stop_writer()
    con = duckdb.connect(str(journal.path))
    con.execute("INSERT INTO schema_version (version, description) VALUES (99, 'from the future')")
    con.close()
    with pytest.raises(JournalError, match="schema version 99 is newer"):
        journal.ensure()


def test_writes_are_idempotent_on_natural_keys(journal):
    for _ in range(2):
        with journal.transaction() as tx:
            tx.record_equity_snapshot(DAY, "day_start", 1_000_000.0, T0, available_funds=900_000.0)
            _order(tx)
            tx.record_order_status("ema-2026-03-02-entry", "Submitted", T0)
            tx.record_execution("0001.01", symbol="SMH", side="BOT", shares=100, price=250.0, exec_time=T0,
                                order_ref="ema-2026-03-02-entry")
            tx.record_signal("ema", "SMH", T0, DAY, "BUY", "provisional BULL, flat", signal="BULL", price=250.0,
                             quantity=100, order_ref="ema-2026-03-02-entry", inputs={"ema25": 251.0})
            tx.record_ema_state("SMH", DAY, 250.0, 251.0, 240.0, fast_span=25, slow_span=125, signal="BULL",
                                closes_seen=300, as_of=T0)
            tx.record_flow_event("run-1", "completed", "ema-entry", T0, outcome="bought 100 SMH")
            tx.record_positions(T0, {"SMH": (100.0, 250.0)})
            tx.record_model("AAPL-v1", "AAPL", "challenger")
            tx.record_model_metrics("AAPL-v1", "test", {"accuracy": 0.55}, T0, baselines={"accuracy": 0.52})
    counts = journal.query(
        "SELECT (SELECT count(*) FROM equity_snapshots) e, (SELECT count(*) FROM orders) o,"
        " (SELECT count(*) FROM order_events) oe, (SELECT count(*) FROM executions) x,"
        " (SELECT count(*) FROM signals) s, (SELECT count(*) FROM ema_state) m,"
        " (SELECT count(*) FROM flow_events) f, (SELECT count(*) FROM position_snapshots) p,"
        " (SELECT count(*) FROM models) md, (SELECT count(*) FROM model_metrics) mm"
    ).iloc[0]
    assert counts.to_dict() == {k: 1 for k in ["e", "o", "oe", "x", "s", "m", "f", "p", "md", "mm"]}


def test_a_repeat_never_overwrites_but_fills_in_what_was_unknown(journal):
    with journal.transaction() as tx:
        assert _order(tx)
        assert not _order(tx, quantity=999)  # a second order with the same ref changes nothing
        assert _order(tx, perm_id=424242)  # ... except an unknown permId
        assert tx.record_execution("0001.01", symbol="SMH", side="BOT", shares=100, price=250.0, exec_time=T0)
        assert tx.record_execution("0001.01", symbol="SMH", side="BOT", shares=100, price=250.0, exec_time=T0,
                                   commission=1.0)
        assert not tx.record_execution("0001.01", symbol="SMH", side="BOT", shares=100, price=999.0,
                                       exec_time=T0, commission=5.0)
        assert tx.record_equity_snapshot(DAY, "day_start", 1_000_000.0, T0)
        assert not tx.record_equity_snapshot(DAY, "day_start", 2.0, T0 + dt.timedelta(minutes=1))
    row = journal.query("SELECT quantity, perm_id FROM orders").iloc[0]
    assert (row["quantity"], row["perm_id"]) == (100.0, 424242)
    fill = journal.query("SELECT price, commission FROM executions").iloc[0]
    assert (fill["price"], fill["commission"]) == (250.0, 1.0)
    assert journal.query("SELECT net_liquidation FROM equity_snapshots")["net_liquidation"][0] == 1_000_000.0


def test_order_status_history_and_terminal_status(journal):
    with journal.transaction() as tx:
        _order(tx)
        tx.record_order_status("ema-2026-03-02-entry", "Submitted", T0)
        tx.record_order_status("ema-2026-03-02-entry", "Filled", T0, filled=100, remaining=0, avg_fill_price=250.0)
        tx.record_order_status("ema-2026-03-02-entry", "Submitted", T0, filled=50)  # stale, arrives late
        with pytest.raises(JournalError, match="order the journal lacks"):
            tx.record_order_status("nope", "Filled", T0)
    assert journal.query("SELECT status FROM orders")["status"][0] == "Filled"
    assert len(journal.query("SELECT * FROM order_events")) == 3


def test_bad_records_are_refused_and_roll_back_the_whole_write(journal):
    with journal.transaction() as tx:
        tx.record_signal("ema", "SMH", T0, DAY, "HOLD", "kept")
    with pytest.raises(ValueError, match="net_liquidation must be a finite number"):
        with journal.transaction() as tx:
            tx.record_signal("ema", "SMH", T0 + dt.timedelta(days=1), DAY, "HOLD", "lost with the rollback")
            tx.record_equity_snapshot(DAY, "day_start", float("nan"), T0)
    with pytest.raises(ValueError, match="as_of must be a timezone-aware"):
        with journal.transaction() as tx:
            tx.record_signal("ema", "SMH", dt.datetime(2026, 3, 2, 15, 55), DAY, "HOLD", "naive")
    with pytest.raises(ValueError, match="price must be a finite number > 0"):
        with journal.transaction() as tx:
            tx.record_execution("x", symbol="SMH", side="BOT", shares=1, price=0.0, exec_time=T0)
    assert list(journal.query("SELECT reason FROM signals")["reason"]) == ["kept"]


def test_views_answer_the_common_questions(journal):
    t1 = T0 + dt.timedelta(days=1)
    with journal.transaction() as tx:
        tx.record_equity_snapshot(DAY, "day_start", 1_000_000.0, T0)
        tx.record_equity_snapshot(DAY, "end_of_day", 1_010_000.0, T0)
        tx.record_equity_snapshot(t1.date(), "day_start", 990_000.0, t1)
        _order(tx)
        tx.record_execution("e1", symbol="SMH", side="BOT", shares=100, price=250.0, exec_time=T0,
                            order_ref="ema-2026-03-02-entry", commission=1.0)
        tx.record_execution("e2", symbol="SMH", side="SLD", shares=100, price=260.0, exec_time=t1, strategy="ema",
                            commission=1.0)
        tx.record_execution("e3", symbol="AAPL", side="BOT", shares=40, price=200.0, exec_time=t1, strategy="mtf",
                            commission=1.0)
        tx.record_signal("mtf", "AAPL", T0, DAY, "NO_TRADE", "below", probability=0.4)
        tx.record_signal("mtf", "AAPL", t1, t1.date(), "BUY", "above", probability=0.6, inputs={"p_up": 0.6})
    trips = journal.query("SELECT * FROM v_round_trips ORDER BY entry_time, symbol")
    ema = trips[trips.strategy == "ema"].iloc[0]
    assert bool(ema.closed) and ema.gross_pnl == 1000.0 and ema.net_pnl == 998.0
    pnl = journal.query("SELECT * FROM v_daily_pnl WHERE strategy = 'ema' ORDER BY session")
    assert list(pnl["realized_net_pnl"]) == [-1.0, 999.0]
    assert pnl["realized_net_pnl"].sum() == ema.net_pnl
    opened = journal.query("SELECT strategy, symbol, quantity, avg_cost FROM v_open_positions")
    assert opened.to_dict("records") == [{"strategy": "mtf", "symbol": "AAPL", "quantity": 40.0, "avg_cost": 200.0}]
    curve = journal.query("SELECT equity, drawdown FROM v_equity_curve ORDER BY session")
    assert list(curve["equity"]) == [1_010_000.0, 990_000.0]
    assert curve["drawdown"].iloc[-1] == pytest.approx(990_000 / 1_010_000 - 1)
    latest = journal.query("SELECT decision, inputs FROM v_latest_signals")
    assert latest["decision"][0] == "BUY" and json.loads(latest["inputs"][0]) == {"p_up": 0.6}


def test_four_processes_writing_together_lose_nothing(journal):
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    workers = [ctx.Process(target=journal_workers.write_signals, args=(str(journal.path), i, 200, start))
               for i in range(4)]
    for w in workers:
        w.start()
    start.set()
    for w in workers:
        w.join(timeout=240)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    per_worker = journal.query("SELECT strategy, count(*) AS n FROM signals GROUP BY strategy ORDER BY strategy")
    assert per_worker.to_dict("records") == [{"strategy": f"w{i}", "n": 200} for i in range(4)]
    journal.stop_writer()
    live = duckdb.connect(str(journal.path), read_only=True)
    assert live.execute("SELECT count(*) FROM signals").fetchone()[0] == 800
    live.close()


def test_a_person_holding_a_sql_session_breaks_no_writer(journal, state_dir, capsys):
    journal = Journal(state_dir / "journal.duckdb")
    journal.ensure()
    ctx = mp.get_context("spawn")
    ready, stop, start = ctx.Event(), ctx.Event(), ctx.Event()
    results = ctx.Queue()
    reader = ctx.Process(target=journal_workers.hold_reader, args=(str(journal.snapshot_path), ready, stop, results))
    reader.start()
    assert ready.wait(60), "the reader never opened its session"
    writers = [ctx.Process(target=journal_workers.write_signals, args=(str(journal.path), i, 100, start))
               for i in range(3)]
    for w in writers:
        w.start()
    start.set()
    for w in writers:
        w.join(timeout=240)
    assert [w.exitcode for w in writers] == [0, 0, 0]
    # the session is still open and usable; it saw counts that never went down
    stop.set()
    status, queries, monotonic = results.get(timeout=60)
    reader.join(timeout=60)
    assert status == "ok" and queries > 0 and monotonic
    # a new query sees every completed write
    assert main(["sql", "SELECT count(*) AS n FROM signals", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["n", "300"]


def test_a_writer_waits_for_a_process_that_holds_the_live_file(journal):
    journal.ensure()
    journal.stop_writer()  # the stray session opens the file while no writer runs
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import duckdb, sys, time\n"
         f"c = duckdb.connect({str(journal.path)!r})\n"
         "print('holding', flush=True)\n"
         "time.sleep(1.0)\n"  # a stray session on the live file, for one second
         "c.close()\n"],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "holding"
    started = time.monotonic()
    with journal.transaction() as tx:
        tx.record_signal("ema", "SMH", T0, DAY, "HOLD", "written after the stray session closed")
    assert holder.wait(timeout=30) == 0
    assert time.monotonic() - started > 0.2
    assert len(journal.query("SELECT * FROM signals")) == 1


def test_a_writer_gives_up_clearly_when_the_live_file_stays_locked(tmp_path):
    journal = Journal(tmp_path / "journal.duckdb", lock_timeout=0.5)
    journal.ensure()
    journal.stop_writer()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         f"import duckdb, sys\nc = duckdb.connect({str(journal.path)!r})\nprint('holding', flush=True)\n"
         "sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(JournalError, match=f"cannot open for writing.*PID {holder.pid}"):
            with journal.transaction() as tx:
                tx.record_signal("ema", "SMH", T0, DAY, "HOLD", "never written")
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert journal.query("SELECT count(*) AS n FROM signals")["n"][0] == 0


def test_sql_command(state_dir, capsys):
    assert main(["sql", "--path"]) == 1  # no journal yet: it says so, and creates none
    assert "no journal" in capsys.readouterr().err and not (state_dir / "journal.duckdb").exists()
    Journal(state_dir / "journal.duckdb").ensure()
    assert main(["sql", "--path"]) == 0
    path = capsys.readouterr().out.strip()
    assert path == str(state_dir / "journal.read.duckdb") and Path(path).exists()
    assert main(["sql", "SELECT 1 AS one", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"one": 1}]
    assert main(["sql", "DELETE FROM signals"]) == 1
    assert "read-only" in capsys.readouterr().err.lower()
    assert main(["sql", "SELEC nonsense"]) == 1
    assert "syntax error" in capsys.readouterr().err.lower()


def test_the_duckdb_cli_opens_the_read_snapshot(journal):
    with journal.transaction() as tx:
        tx.record_signal("ema", "SMH", T0, DAY, "HOLD", "seen from the CLI")
    journal.sync()  # what `tradeflow sql --path` does before printing the path
    cli = Path(sys.executable).with_name("duckdb")  # duckdb-cli, in the dev group of the lock
    out = subprocess.run([str(cli), "-readonly", "-csv", str(journal.snapshot_path), "-c",
                          "SELECT reason FROM v_latest_signals"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["reason", "seen from the CLI"]


def test_a_write_leaves_no_retired_snapshot_and_an_open_reader_keeps_its_view(journal):
    with journal.transaction() as tx:
        tx.record_signal("ema", "SMH", T0, DAY, "HOLD", "first")
    journal.sync()  # the writer refreshes the snapshot just after the commit; sync waits for it
    held = duckdb.connect(str(journal.snapshot_path), read_only=True)  # a person's session on the snapshot
    try:
        for n in range(1, 4):
            with journal.transaction() as tx:
                tx.record_signal("ema", "SMH", T0 + dt.timedelta(days=n), DAY, "HOLD", f"write {n}")
        assert held.execute("SELECT count(*) FROM signals").fetchone()[0] == 1  # its file was never changed
    finally:
        held.close()
    assert journal.query("SELECT count(*) AS n FROM signals")["n"][0] == 4
    assert not [p.name for p in journal.path.parent.iterdir() if p.name.endswith((".tmp", ".retired"))]


def test_a_transaction_that_changes_nothing_leaves_the_snapshot_alone(journal):
    with journal.transaction() as tx:
        tx.record_signal("mtf", "AAPL", T0, DAY, "NO_TRADE", "below threshold", probability=0.4)
    journal.sync()
    before = journal.snapshot_path.stat().st_ino
    with journal.transaction() as tx:  # a read, and a repeated idempotent write: nothing changes
        assert tx.fetch("SELECT count(*) FROM signals") == [(1,)]
        assert not tx.record_signal("mtf", "AAPL", T0, DAY, "NO_TRADE", "below threshold", probability=0.4)
    journal.sync()
    assert journal.snapshot_path.stat().st_ino == before  # not copied again
    with journal.transaction() as tx:
        tx.record_signal("mtf", "TSLA", T0, DAY, "NO_TRADE", "below threshold", probability=0.4)
    journal.sync()
    assert journal.snapshot_path.stat().st_ino != before
    assert journal.query("SELECT count(*) AS n FROM signals")["n"][0] == 2
