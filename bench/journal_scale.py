"""The journal at scale: 1,000,000 signals and 100,000 executions; views, writes, concurrent writers, `tradeflow sql`.

Building the journal (in a temporary folder, deleted afterwards). Rows go in through the journal's documented
bulk path, `Journal.bulk()` (the file opened directly while no writer runs; migrations, then the tables the
writes keep rebuilt, commit, read snapshot) with ``INSERT ... SELECT`` on its DuckDB connection `JournalTx.con`,
which skips the per-record checks of the ``record_*`` methods. The rows follow the NYSE calendar
(`core.calendar.sessions`, 2016-2025):
- signals: the MTF decision of ``signal_symbols`` (20) symbols at every 5-minute bar close of the most recent
  sessions, as many as make ``signals`` rows (1,000,000 = 641 sessions, about 2.5 years), with a JSON ``inputs``;
- executions: ``executions`` fills (100,000) of intraday MTF round trips on those 20 symbols spread over all
  sessions (entry at a 5-minute bar, exit 1 to 24 bars later in the same session; one trip in 4 is short; one
  in 7 exits in two partial fills; prices are deterministic, not market prices), plus 30 EMA round trips on SMH
  held for weeks. One order per fill (`orders`, with the strategy; a third of the fills carry no strategy of
  their own, so the views must take it from the order) and two order events per order (Submitted, Filled).

Measured (every write goes through the journal's writer process, `core.journal.server`):
- the four views people read most, ``v_daily_pnl``, ``v_round_trips``, ``v_equity_curve``, ``v_open_positions``:
  ``SELECT * FROM view`` to a DataFrame, p50 and p95 of ``view_repeats`` runs on one open read session of the
  snapshot, and through `Journal.query` (bring the snapshot up to date, open it, query, as `tradeflow sql` does);
- one writer: ``record_signal`` in its own transaction, ``writes`` times, on this journal and on an empty one
  (p50/p95 latency, and the ratio of the two p95s); then how long after a write `Journal.sync` returns, i.e.
  how stale the snapshot is when nobody waits for it (``snapshot_lag``: the checkpoint and the file copy);
- 4 writer processes started together (spawn), ``writes_per_worker`` transactions each, on both journals:
  transactions a second over all of them and p50/p95 latency a write (waits for other writers included);
- ``tradeflow sql "SELECT 1"`` as a new process on the big journal, from its start to its exit (``sql_select_1``).
"""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.common import Target, make_result, summary_ms, time_calls
from core.journal import Journal

NAME = "journal_scale"
VIEWS = ("v_daily_pnl", "v_round_trips", "v_equity_curve", "v_open_positions")
WRITE_BASE = dt.datetime(2030, 1, 2, 14, 35, tzinfo=dt.timezone.utc)
"""as_of of benchmark writes: after every bulk-loaded row, so no write collides with one."""


# --------------------------------------------------------------------------------------------------------------
# building the journal


def _session_frame(first: str, last: str) -> pd.DataFrame:
    """One row per NYSE session: ``session`` (date), ``open_utc`` (tz-aware), ``n_bars`` (5-minute bars)."""
    from core.calendar import sessions

    rows = [(s.date, s.open.astimezone(dt.timezone.utc), len(s.bar_ends())) for s in sessions(first, last)]
    return pd.DataFrame(rows, columns=["session", "open_utc", "n_bars"])


def _fills_frame(sess: pd.DataFrame, n_fills: int, n_symbols: int) -> pd.DataFrame:
    """The fills described in the module docstring, in time order per symbol: one row per fill with
    ``exec_id, order_ref, strategy, symbol, side, shares, price, commission, exec_time, intent``."""
    n_sess = len(sess)
    open_ns = sess["open_utc"].dt.as_unit("ns").astype("int64").to_numpy()  # UTC ns
    bars = sess["n_bars"].to_numpy()
    five = 5 * 60 * 10**9
    # intraday MTF trips: 2 fills, or 3 for every 7th (exit in two parts)
    n_trips = int(n_fills / (2 + 1 / 7)) + n_symbols
    j = np.arange(n_trips)
    sym = j % n_symbols
    k = j // n_symbols  # trip number of its symbol
    per_symbol = n_trips // n_symbols + 1
    s_idx = (k * n_sess) // per_symbol
    entry_bar = (j * 37) % 40 + 1
    exit_bar = np.minimum(entry_bar + 1 + (j * 13) % 24, bars[s_idx])
    short = k % 4 == 3
    split = j % 7 == 6
    qty = 10.0 * (1 + j % 9)
    base = 40.0 + 23.0 * sym
    entry_px = base * (1 + 0.25 * np.sin(s_idx / 90.0)) * (1 + 0.001 * ((j % 5) - 2))
    exit_px = entry_px * (1 + 0.004 * ((j * 11) % 7 - 3) / 3)
    legs = []
    for leg, (bar, px, shares, sell, mask, intent) in enumerate((
        (entry_bar, entry_px, qty, short, np.ones(n_trips, bool), "entry"),
        (exit_bar, exit_px, np.where(split, np.floor(qty * 0.6), qty), ~short, np.ones(n_trips, bool), "exit"),
        (exit_bar, exit_px * 1.0005, qty - np.floor(qty * 0.6), ~short, split, "exit"),
    )):
        m = mask
        legs.append(pd.DataFrame({
            "trip": j[m], "leg": leg, "strategy": "mtf", "symbol": [f"S{x:02d}" for x in sym[m]],
            "side": np.where(sell[m], "SLD", "BOT"), "shares": shares[m], "price": np.round(px[m], 2),
            "exec_ns": open_ns[s_idx[m]] + bar[m] * five - 2 * 10**9 + leg, "intent": intent,
        }))
    # EMA SMH trips: 30 trips, entered at 15:55 and held about 40 sessions
    e = np.arange(30)
    e_in = (e * n_sess) // 31
    e_out = np.minimum(e_in + 40, n_sess - 1)
    close_ns = open_ns + bars * five
    for leg, (idx, side, intent) in enumerate(((e_in, "BOT", "entry"), (e_out, "SLD", "exit"))):
        legs.append(pd.DataFrame({
            "trip": e, "leg": leg, "strategy": "ema", "symbol": "SMH", "side": side, "shares": 4000.0,
            "price": np.round(200.0 * (1 + 0.3 * np.sin(idx / 200.0)) * (1 + 0.02 * leg * np.cos(e)), 2),
            "exec_ns": close_ns[idx] - five, "intent": intent,
        }))
    fills = pd.concat(legs, ignore_index=True).sort_values(["exec_ns", "symbol", "leg"], kind="stable")
    fills = fills.iloc[:n_fills].reset_index(drop=True)
    fills["exec_id"] = [f"0000{i:07x}.{leg:02d}.01" for i, leg in zip(fills.index, fills["leg"], strict=True)]
    fills["order_ref"] = fills["strategy"] + "-" + fills["symbol"] + "-" + fills["trip"].astype(str) + "-" + \
        fills["leg"].astype(str)
    fills["commission"] = np.maximum(1.0, 0.005 * fills["shares"])
    fills["exec_time"] = pd.to_datetime(fills["exec_ns"], utc=True)
    return fills.drop(columns=["exec_ns"])


def build_journal(path: Path, signals: int = 1_000_000, executions: int = 100_000,
                  signal_symbols: int = 20) -> dict[str, float]:
    """Create the journal at ``path`` with the rows of the module docstring.

    Returns:
        Figures: ``load_s`` (wall time of the bulk transaction, snapshot included), ``file_mb`` (live file),
        ``signals_rows``, ``executions_rows``, ``orders_rows``, ``sessions_of_signals``.
    """
    sess = _session_frame("2016-01-01", "2025-12-31")
    per_session = int(sess["n_bars"].iloc[-1]) * signal_symbols
    recent = sess.iloc[-(signals // per_session + 10):].copy()  # + 10: early closes have fewer bars
    fills = _fills_frame(sess, executions, signal_symbols)
    symbols = pd.DataFrame({"symbol": [f"S{x:02d}" for x in range(signal_symbols)]})
    journal = Journal(path)
    t0 = time.perf_counter()
    with journal.bulk() as tx:
        con = tx.con
        con.register("sess", recent)
        con.register("syms", symbols)
        con.register("fills", fills)
        con.execute(f"""
            INSERT INTO signals (strategy, symbol, as_of, session, decision, signal, probability, price,
                                 reason, inputs, run_id)
            SELECT 'mtf', symbol, as_of, session, decision, CASE WHEN p >= 0.5 THEN 'UP' ELSE 'DOWN' END, p,
                   px, CASE decision WHEN 'NO_TRADE' THEN 'probability inside the band' ELSE 'signal' END,
                   json_object('p_up', p, 'close', px, 'bar', bar, 'features_rows', 3528),
                   'run-' || strftime(as_of, '%Y%m%d%H%M')
            FROM (
                SELECT symbol, s.session, s.open_utc + to_minutes(5 * bar) AS as_of, bar,
                       (hash(symbol, s.session, bar) % 1000) / 1000.0 AS p,
                       round(50 + (hash(symbol) % 400) + bar / 10.0, 2) AS px,
                       CASE WHEN hash(symbol, s.session, bar) % 1000 >= 940 THEN 'BUY'
                            WHEN hash(symbol, s.session, bar) % 1000 < 60 THEN 'SELL'
                            ELSE 'NO_TRADE' END AS decision
                FROM sess s, range(1, s.n_bars + 1) r(bar), syms
            )
            ORDER BY as_of DESC, symbol LIMIT {int(signals)}
        """)
        con.execute("""
            INSERT INTO orders (order_ref, order_id, strategy, symbol, intent, action, quantity, order_type,
                                session, as_of, status)
            SELECT order_ref, row_number() OVER (ORDER BY exec_time, exec_id), strategy, symbol, intent,
                   CASE side WHEN 'BOT' THEN 'BUY' ELSE 'SELL' END, shares, 'MKT',
                   CAST(timezone('America/New_York', exec_time) AS DATE), exec_time - INTERVAL 2 SECOND, 'Filled'
            FROM fills
        """)
        con.execute("""
            INSERT INTO order_events (order_ref, status, filled, remaining, avg_fill_price, event_time)
            SELECT order_ref, 'Submitted', 0, shares, NULL, exec_time - INTERVAL 1 SECOND FROM fills
            UNION ALL
            SELECT order_ref, 'Filled', shares, 0, price, exec_time FROM fills
        """)
        con.execute("""
            INSERT INTO executions (exec_id, order_ref, order_id, strategy, symbol, side, shares, price,
                                    commission, exec_time, account)
            SELECT exec_id, order_ref, o.order_id, CASE WHEN f.leg = 1 THEN NULL ELSE f.strategy END, f.symbol,
                   side, shares, price, commission, exec_time, 'DU0000000'
            FROM fills f JOIN orders o USING (order_ref)
        """)
        counts = con.execute(
            "SELECT (SELECT count(*) FROM signals), (SELECT count(*) FROM executions), (SELECT count(*) FROM orders),"
            " (SELECT count(DISTINCT session) FROM signals)"
        ).fetchone()
    load_s = time.perf_counter() - t0
    return {"load_s": load_s, "file_mb": path.stat().st_size / 2**20, "signals_rows": counts[0],
            "executions_rows": counts[1], "orders_rows": counts[2], "sessions_of_signals": counts[3]}


# --------------------------------------------------------------------------------------------------------------
# writes


def write_signal(journal: Journal, worker: int, n: int) -> None:
    """One `record_signal` transaction: strategy ``w{worker}``, as_of = WRITE_BASE + 5 n minutes."""
    as_of = WRITE_BASE + dt.timedelta(minutes=5 * n)
    with journal.transaction() as tx:
        if not tx.record_signal(f"w{worker}", "AAPL", as_of, as_of.date(), "NO_TRADE", "bench write",
                                probability=0.5, inputs={"worker": worker, "n": n}):
            raise RuntimeError(f"write {worker}/{n} recorded nothing: the key was taken")


def writer_process(paths: list[str], worker: int, writes: int, start_events, results) -> None:
    """Worker of the concurrent-write measure (spawned once for every journal, so the figures exclude process
    start-up): for each journal in ``paths``, wait for its event in ``start_events``, make ``writes`` writes, and
    put ``(phase, worker, [latency s], first start, last end)`` (wall-clock seconds) on ``results``, or
    ``(phase, worker, error text)`` and stop."""
    phase = -1
    try:
        for phase, (path, event) in enumerate(zip(paths, start_events, strict=True)):
            journal = Journal(Path(path), lock_timeout=300)
            if not event.wait(600):
                raise TimeoutError("never told to start")
            lat = []
            first = time.time()
            for n in range(writes):
                t0 = time.perf_counter()
                write_signal(journal, worker, n)
                lat.append(time.perf_counter() - t0)
            results.put((phase, worker, lat, first, time.time()))
    except Exception as exc:  # reported to the parent, which raises it
        results.put((phase, worker, repr(exc)))


def concurrent_writes(paths: list[Path], workers: int, writes: int, worker_offset: int) -> list[dict[str, float]]:
    """``workers`` spawned processes writing ``writes`` transactions each, all together, to each journal of
    ``paths`` in turn (the next journal once every worker is done with the previous one).

    Returns:
        Per journal: ``tx_per_s`` (all writes / span from the first start to the last end), ``write_p50_ms``,
        ``write_p95_ms``, ``write_max_ms``.

    Raises:
        RuntimeError: a worker failed, died, or did not report within 10 minutes.
    """
    ctx = mp.get_context("spawn")
    events, results = [ctx.Event() for _ in paths], ctx.Queue()
    procs = [ctx.Process(target=writer_process, args=([str(p) for p in paths], worker_offset + i, writes, events,
                                                       results))
             for i in range(workers)]
    for p in procs:
        p.start()
    out = []
    try:
        for event in events:
            event.set()
            reports = _collect(results, procs, timeout=600)
            lat = [x for r in reports for x in r[2]]
            span = max(r[4] for r in reports) - min(r[3] for r in reports)
            out.append({"tx_per_s": len(lat) / span, **summary_ms("write", lat)})
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    return out


def _collect(results, procs, timeout: float) -> list[tuple]:
    """One report from each of ``procs``; RuntimeError when one fails, dies or ``timeout`` (s) passes."""
    reports: list[tuple] = []
    deadline = time.monotonic() + timeout
    while len(reports) < len(procs):
        try:
            report = results.get(timeout=1.0)
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                for p in procs:
                    p.kill()
                raise RuntimeError(f"writer processes: {len(reports)} of {len(procs)} reported"
                                   f" (exit codes of the dead: {dead}; see their stderr)") from None
            continue
        if len(report) == 3:
            for p in procs:
                p.kill()
            raise RuntimeError(f"writer process {report[1]} failed: {report[2]}")
        reports.append(report)
    return reports


def sequential_writes(journal: Journal, writes: int, worker: int) -> dict[str, float]:
    """``writes`` single-writer transactions (ms): latency; then, after each of ``writes // 4`` more, how long
    `Journal.sync` takes to see it in the snapshot (``snapshot_lag``)."""
    write_signal(journal, worker, 10_000)  # untimed: the writer process starts
    lat = []
    for n in range(writes):
        t0 = time.perf_counter()
        write_signal(journal, worker, n)
        lat.append(time.perf_counter() - t0)
    lag = []
    for n in range(writes, writes + max(3, writes // 4)):
        write_signal(journal, worker, n)
        t0 = time.perf_counter()
        journal.sync()
        lag.append(time.perf_counter() - t0)
    return {**summary_ms("write", lat), **summary_ms("snapshot_lag", lag)}


def sql_select_1(state_dir: Path, repeats: int = 3) -> list[float]:
    """Seconds from start to exit of ``python -m deployments.cli sql "SELECT 1"`` on the journal in `state_dir`."""
    env = {**os.environ, "TRADEFLOW_STATE_DIR": str(state_dir)}
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "deployments.cli", "sql", "SELECT 1"], env=env,
                              capture_output=True, text=True, timeout=120)
        out.append(time.perf_counter() - t0)
        if done.returncode != 0:
            raise RuntimeError(f"tradeflow sql failed: {done.stderr}")
    return out


# --------------------------------------------------------------------------------------------------------------


def run(signals: int = 1_000_000, executions: int = 100_000, view_repeats: int = 10, writes: int = 20,
        workers: int = 4, writes_per_worker: int = 15) -> dict[str, Any]:
    """Build the journal, then time the views, single writes, concurrent writes and `tradeflow sql` (module
    docstring).

    Returns:
        The result dict of `bench.common.make_result`, with issue #14's targets.
    """
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-journal-") as tmp:
        big = Journal(Path(tmp) / "big" / "journal.duckdb", lock_timeout=300)
        empty = Journal(Path(tmp) / "empty" / "journal.duckdb", lock_timeout=300)
        try:
            empty.ensure()
            figures.update(build_journal(big.path, signals, executions))
            figures["snapshot_mb"] = big.snapshot_path.stat().st_size / 2**20
            with big.reader() as con:
                for view in VIEWS:
                    con.execute(f"SELECT * FROM {view}").df()  # untimed: first read of the file
                    wall, cpu = time_calls(lambda v=view: con.execute(f"SELECT * FROM {v}").df(), view_repeats)
                    figures[f"{view}_rows"] = len(con.execute(f"SELECT * FROM {view}").df())
                    figures.update(summary_ms(view, wall))
                    figures[f"{view}_cpu_p50_ms"] = 1000 * statistics.median(cpu)
            for view in VIEWS:
                wall, _cpu = time_calls(lambda v=view: big.query(f"SELECT * FROM {v}"), max(3, view_repeats // 2))
                figures.update({f"{k}_new_connection": v for k, v in summary_ms(view, wall).items()})
            for label, journal in (("empty", empty), ("big", big)):
                seq = sequential_writes(journal, writes, worker=0)
                figures.update({f"{label}_{k}": v for k, v in seq.items()})
            figures["write_p95_ratio_big_to_empty"] = figures["big_write_p95_ms"] / figures["empty_write_p95_ms"]
            both = concurrent_writes([empty.path, big.path], workers, writes_per_worker, worker_offset=1)
            for label, conc in zip(("empty", "big"), both, strict=True):
                figures.update({f"{label}_{workers}proc_{k}": v for k, v in conc.items()})
            figures.update(summary_ms("sql_select_1", sql_select_1(big.path.parent)))
            figures["big_file_mb_after"] = big.path.stat().st_size / 2**20
        finally:
            big.stop_writer()
            empty.stop_writer()
    targets = {f"{view}_p95_ms": Target("<=", 100.0) for view in VIEWS}
    targets.update({
        "big_write_p95_ms": Target("<=", 30.0),
        "write_p95_ratio_big_to_empty": Target("<=", 1.5),
        f"big_{workers}proc_write_p95_ms": Target("<=", 150.0),
        f"big_{workers}proc_tx_per_s": Target(">=", 50.0),
        "sql_select_1_p95_ms": Target("<=", 1000.0),
    })
    return make_result(
        NAME,
        f"journal with {signals:,} signals and {executions:,} executions: views, writes, {workers} writers, sql",
        figures,
        targets,
        {"signals": signals, "executions": executions, "view_repeats": view_repeats, "writes": writes,
         "workers": workers, "writes_per_worker": writes_per_worker, "cpus": os.cpu_count()},
        [
            "views: SELECT * FROM view -> DataFrame on one open read session (p50/p95 of view_repeats);"
            " *_cpu_p50_ms: CPU time of this process (DuckDB's threads included) for the same query, which"
            " other processes' load hardly changes (compare it with the wall time and run.machine.load_avg);"
            " *_new_connection: through Journal.query (sync with the writer, open the snapshot, query)",
            "empty_* / big_*: record_signal, one transaction each, through the writer process, on an empty"
            " journal and on the loaded one; snapshot_lag: Journal.sync right after a write (checkpoint + copy)",
            f"{workers}proc: {workers} spawned processes writing together; tx_per_s over all of them,"
            " latency per write includes waiting for the other writers' transactions",
            "sql_select_1: a new `python -m deployments.cli sql 'SELECT 1'` process, start to exit",
        ],
    )
