"""One `mtf-signal` run over many symbols against the paper exchange: 50 symbols inside 60 s (target) without
breaking IB's pacing rules (about 60 historical requests in 10 minutes), and how the cost grows with symbols.

50 symbols from two: the paper exchange serves what its data folder holds, and the real data have hourly and
5-minute bars for AAPL and TSLA only. The benchmark builds a data folder in a temporary directory whose
`1h/`, `5m/` and `daily/` files for `S01` … `S50` are symbolic links to the real AAPL (odd numbers) and TSLA (even)
files (SMH, VIX and the rest are linked under their own names), and registers the champion AAPL or TSLA model
(trained once here by `tradeflow train --epochs 1`: a real model of the real size) under each name
(`bench/_models.py`). So every symbol costs what a real one costs; the prices repeat.

The run: `as_of` 2026-03-02 10:35 (the 09:30 hourly bar has just ended), the exchange's clock stopped there, a
fresh journal and account, one Prefect flow run (a real `prefect server start`) in a process of its own, as a
deployment's run is (`bench/_mtf_run.py`, with the timers of `bench/_flow_timing.py`).

Bar store. A first run for a symbol backfills `MIN_HISTORY_WEEKS` + 2 weeks of hourly bars (`core/bar_store.py`:
about 9 requests of `1 M` each): 50 new symbols need about 450 requests, which IB's pacing spreads over more than
an hour. So the measured runs start from the store as the previous session's runs left it (steady state: the
hourly bars up to the previous session's close, written from the real 1h files). At 10:35 a new hourly bar has
ended, so each symbol makes one request (`N D` since its last stored bar): the busiest of a session's runs (a run
asks only when a new bar can have ended, `core.bar_store.next_bar_end`: the 11 other runs of the hour ask for
none). The cold start is measured on 2 symbols (an empty store) and its request count reported per symbol.
Requests are counted at the exchange (every historical request served).

Figures per size (2, 10, 50 symbols by default): the run's wall time (process start to exit, and the flow's own
code alone), historical requests, decisions journaled, orders; the time in broker calls, decision (features,
P(up), rule), journal and the rest; a least-squares line of wall time against symbols.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Target, data_dir, make_result

NAME = "mtf_signal_scale"
ROOT = Path(__file__).resolve().parents[1]
AS_OF = "2026-03-02T10:35:00-05:00"
SOURCES = ("AAPL", "TSLA")
IB_PACING = (60, 600.0)
"""IB's historical data pacing: about 60 requests in any 10 minutes."""


def symbol_names(n: int) -> list[str]:
    """`S01` … `Snn`."""
    return [f"S{i:02d}" for i in range(1, n + 1)]


def source_of(name: str) -> str:
    """The real symbol whose bars `name` serves: AAPL for odd numbers, TSLA for even."""
    return SOURCES[(int(name[1:]) + 1) % 2]


def build_data_dir(real: Path, target: Path, names: list[str]) -> Path:
    """A bars folder at `target`: every real file linked under its own name, and each of `names` linked to its
    source's files (`source_of`)."""
    for sub in ("daily", "1h", "5m"):
        (target / sub).mkdir(parents=True, exist_ok=True)
        for f in (real / sub).glob("*.csv"):
            (target / sub / f.name).symlink_to(f.resolve())
        for name in names:
            src = real / sub / f"{source_of(name)}.csv"
            if src.exists():
                (target / sub / f"{name}.csv").symlink_to(src.resolve())
    return target


def build_store(data: Path, root: Path, names: list[str], as_of: datetime) -> None:
    """The bar store (`core.bar_store`) as the previous session's runs left it: each symbol's hourly bars from
    `as_of` - the MTF history it needs up to the previous session's close, from the real 1h files."""
    from core.bar_store import BarStore
    from core.bars import load_hourly_bars
    from core.calendar import session_for
    from tasks.mtf_signal import HISTORY

    session = session_for(as_of)
    store = BarStore(root)
    cache: dict[str, Any] = {}
    for name in names:
        src = source_of(name)
        if src not in cache:
            bars = load_hourly_bars(data, src)
            # from a week before the history a run needs (the store of a running system reaches further back)
            cache[src] = bars[(bars.index >= as_of - HISTORY - timedelta(days=7)) & (bars.index < session.open)]
        store.save(name, cache[src])


class _Exchange:
    """The paper exchange for one run (fresh account, clock stopped at as_of), counting historical requests."""

    def __init__(self, data: Path, as_of: datetime, state_file: Path):
        from core.paper_exchange import PaperExchange

        self.ex = PaperExchange(data, start=as_of, state_file=state_file).start()
        self.historical = 0
        serve = type(self.ex)._handlers[20]

        def counted(ex, conn, fields):
            self.historical += 1
            return serve(ex, conn, fields)

        self.ex._handlers = {**type(self.ex)._handlers, 20: counted}  # this exchange's dispatch table

    def stop(self) -> None:
        self.ex.stop()


def _run_size(work: Path, data: Path, trained: Path, store: Path | None, names: list[str], env: dict[str, str],
              timeout: float) -> dict[str, Any]:
    """One mtf-signal run for `names` in a child process, in a fresh state directory whose registry holds the
    champions of `trained` cloned under `names`; returns its figures (see the module docstring)."""
    from bench._models import clone_champions
    from core.journal import Journal

    state = work / f"state-{len(names)}{'' if store else '-cold'}"
    state.mkdir()
    clone_champions(trained, state, {n: source_of(n) for n in names})
    Journal(state / "journal.duckdb").stop_writer()  # the run's journal starts as the flow finds it
    if store is not None:
        shutil.copytree(store, state / "bars")
    exchange = _Exchange(data, datetime.fromisoformat(AS_OF), state / "exchange.json")
    try:
        child_env = {**env, "IBKR_PORT": str(exchange.ex.port), "TRADEFLOW_STATE_DIR": str(state)}
        t0 = time.time()
        out = subprocess.run([sys.executable, "-m", "bench._mtf_run", AS_OF, ",".join(names)], cwd=ROOT,
                             env=child_env, capture_output=True, text=True, timeout=timeout)
        wall = time.time() - t0
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if out.returncode != 0 or not lines:
            raise RuntimeError(f"mtf-signal run for {len(names)} symbols exited {out.returncode}:\n"
                               f"{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
        res = json.loads(lines[-1])
        orders = len(exchange.ex.engine.orders)
        requests = exchange.historical
    finally:
        exchange.stop()
    if res["type"] != "COMPLETED":
        raise RuntimeError(f"mtf-signal run for {len(names)} symbols ended {res['type']}: {res['message']}")
    rec = res["record"]
    flow_s = rec["flow_exited"] - rec["flow_entered"]
    entered, last = rec["flow_entered"], max(t for *_, t in rec["signals"])

    def spent(category: str) -> float:
        return sum(max(0.0, min(b, last) - max(a, entered)) for c, _, a, b in rec["intervals"] if c == category)

    decisions = res["result"]["decisions"]
    return {"symbols": len(names), "wall_s": wall, "flow_s": flow_s, "to_last_decision_s": last - entered,
            "historical_requests": requests, "decisions": len(decisions),
            "no_probability": sum(1 for d in decisions if d.get("p_up") is None), "orders": orders,
            "broker_s": spent("broker"), "decision_s": spent("decision"), "journal_s": spent("journal")}


def run(sizes: tuple[int, ...] = (2, 10, 50), timeout: float = 600.0, epochs: int = 1) -> dict[str, Any]:
    """Run the benchmark (module docstring) for each number of symbols in `sizes` (the largest has the target).

    Raises:
        RuntimeError: a run did not complete.
    """
    from bench._models import train_champions
    from deployments.processes import LocalServer, free_port

    largest = max(sizes)
    names = symbol_names(largest)
    as_of = datetime.fromisoformat(AS_OF)
    real = data_dir()
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-mtf-scale-")))
        server = LocalServer(work / "prefect-home", free_port(), work / "server.log", ui=False)
        server.start()
        stack.callback(server.stop)
        data = build_data_dir(real, work / "bars", names)
        trained = work / "trained"
        t0 = time.time()
        train_champions(trained, SOURCES, epochs=epochs)
        train_s = time.time() - t0
        store = work / "store"
        build_store(real, store, names, as_of)
        env = {**{k: v for k, v in os.environ.items()
                  if not k.startswith("PREFECT_") and k != "PYTHONDONTWRITEBYTECODE"},
               "PREFECT_API_URL": server.api_url, "IBKR_HOST": "127.0.0.1", "TRADEFLOW_DATA_DIR": str(data)}
        _run_size(work, data, trained, store, names[:2], env, timeout)  # warm-up (disk cache, bytecode): not counted
        shutil.rmtree(work / "state-2")
        results = [_run_size(work, data, trained, store, names[:n], env, timeout) for n in sorted(sizes)]
        cold = _run_size(work, data, trained, None, names[:2], env, timeout)

    figures: dict[str, float] = {}
    for r in results:
        n = r["symbols"]
        for key in ("wall_s", "flow_s", "to_last_decision_s", "historical_requests", "decisions", "orders",
                    "no_probability", "broker_s", "decision_s", "journal_s"):
            figures[f"s{n}_{key}"] = r[key]
    xs = np.array([r["symbols"] for r in results], dtype=float)
    ys = np.array([r["wall_s"] for r in results])
    if len(xs) >= 2:
        slope, intercept = np.polyfit(xs, ys, 1)
        figures["wall_s_per_symbol"] = float(slope)
        figures["wall_s_fixed"] = float(intercept)
    per_symbol_cold = cold["historical_requests"] / cold["symbols"]
    figures["cold_requests_per_symbol"] = per_symbol_cold
    figures[f"cold_s{largest}_requests_estimate"] = per_symbol_cold * largest
    figures[f"cold_s{largest}_min_minutes_under_pacing"] = (
        max(0.0, np.ceil(per_symbol_cold * largest / IB_PACING[0]) - 1) * IB_PACING[1] / 60)
    figures["training_s"] = train_s
    key = f"s{largest}_wall_s"
    targets = {key: Target("<=", 60.0), f"s{largest}_historical_requests": Target("<=", IB_PACING[0])}
    notes = [
        f"symbols S01..S{largest:02d}: links to the real AAPL (odd) and TSLA (even) bars in a temporary data folder; "
        "each registered with the champion AAPL/TSLA model trained here (tradeflow train --epochs "
        f"{epochs}, {train_s:.0f} s, not part of any figure)",
        "bar store in steady state (the hourly bars to the previous close, from the real 1h files), as_of just after "
        "an hourly bar ended: one historical request a symbol, counted at the exchange",
        f"cold start (empty store) measured on 2 symbols: {per_symbol_cold:g} requests a symbol; for {largest} "
        f"symbols {per_symbol_cold * largest:g} requests, which IB's pacing ({IB_PACING[0]} per "
        f"{IB_PACING[1] / 60:g} minutes) makes impossible in 60 s",
        "wall_s: the run's process from start to exit (Python, Prefect, imports, the flow run); flow_s: the flow's "
        "own code; to_last_decision_s: from the flow's start to its last decision committed to the journal; "
        "broker_s / decision_s (features, P(up), rule) / journal_s: time inside each up to that last decision",
        "over a session: a run asks only when a new hourly bar can have ended (core.bar_store.next_bar_end), so the "
        "run after each bar's end asks once a symbol and the others not at all (about 7 requests a symbol a "
        f"session): up to {IB_PACING[0]} symbols stay within IB's pacing; each run's process has its own pacer "
        "and does not see the others' requests",
        "wall_s_per_symbol / wall_s_fixed: least-squares line of wall_s against the number of symbols",
    ]
    config = {"sizes": list(sizes), "as_of": AS_OF, "epochs": epochs, "sources": list(SOURCES)}
    return make_result(NAME, f"one mtf-signal run for up to {largest} symbols against the paper exchange",
                       figures, targets, config, notes)
