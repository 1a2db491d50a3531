"""Worker processes for the journal's concurrency tests (importable by `multiprocessing` with spawn)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from core.calendar import NY
from core.journal import Journal

BASE = dt.datetime(2026, 3, 2, 9, 35, tzinfo=NY)


def write_signals(path: str, worker: int, rows: int, start_event) -> None:
    """Wait for `start_event`, then write `rows` signals, one transaction each, as strategy `w{worker}`."""
    journal = Journal(Path(path), lock_timeout=120)
    start_event.wait(30)
    for n in range(rows):
        as_of = BASE + dt.timedelta(minutes=5 * n)
        with journal.transaction() as tx:
            assert tx.record_signal(
                f"w{worker}", "AAPL", as_of, as_of.date(), "NO_TRADE", "concurrency test",
                probability=0.5, inputs={"worker": worker, "n": n},
            )


def hold_reader(snapshot: str, ready_event, stop_event, results) -> None:
    """Hold one read-only DuckDB session on the snapshot and query it in a loop until told to stop, as a
    person at the DuckDB CLI would; records each count it saw (they never go down) or the error."""
    import duckdb

    con = duckdb.connect(snapshot, read_only=True)
    try:
        seen = []
        ready_event.set()
        while not stop_event.is_set():
            seen.append(con.execute("SELECT count(*) FROM signals").fetchone()[0])
            con.execute("SELECT * FROM v_latest_signals").fetchall()
        results.put(("ok", len(seen), seen == sorted(seen)))
    except Exception as exc:  # reported to the test, which fails on it
        results.put(("error", repr(exc), False))
    finally:
        con.close()
