"""Timers around what a flow run spends its time on, for the benchmarks (not a benchmark itself: no `run`).

The benchmarks run the real flows, unchanged, through entrypoints `bench/_timed_ema_entry.py:ema_entry` and
`bench/_timed_mtf_signal.py:mtf_signal`, which ARE the flows of `flows/` (the same objects). Such an entrypoint
imports this module first, which notes when the process was created (/proc/self/stat, 10 ms resolution) and when
it started importing (Prefect is imported by then); then it imports its flow module and calls `instrument`, which
notes when the flow's imports were done and wraps, by monkeypatching in this process only:

- every public method of `core.ib_broker.IBBroker` ("broker": the outermost call only, so `place_order`'s own
  look-ups are not counted twice);
- the decision functions as the flow modules call them ("decision": `decide_before_close` for ema-entry; for
  mtf-signal the 45 features, the champion's P(up) (numpy forward pass) and the rule function `decide`);
- `core.journal.Journal.transaction` ("journal"), noting when each transaction that recorded a signal had
  committed (its read snapshot refreshed: the decision is visible to SQL from then on);
- the flows' `flow_run(...)` context, whose entry is the moment the flow's own code starts.

At exit the process appends one JSON line to the file named by TRADEFLOW_BENCH_TIMINGS: the flow run id, those
instants (epoch seconds, wall clock) and the list of timed intervals `[category, name, start, end]`.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import threading
import time
from contextlib import contextmanager
from typing import Any

T_MODULE = time.time()


def process_start_time(pid: int | str = "self") -> float:
    """When the process was created (epoch seconds; Linux /proc, resolution 1/CLK_TCK s)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = int(fields[19])  # field 22 of stat(5), counted after the command name
    with open("/proc/stat") as fh:
        boot = next(int(line.split()[1]) for line in fh if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


RECORD: dict[str, Any] = {"pid": os.getpid(), "process_start": process_start_time(), "module_start": T_MODULE,
                          "intervals": [], "signals": []}
_depth = threading.local()


def _timed(category: str, name: str, fn):
    """`fn` recording its calls as [category, name, start, end] when no other timed call encloses them (a call
    inside another counts for the outer one's category: `place_order`'s look-ups are broker time once)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        depth = getattr(_depth, "n", 0)
        _depth.n = depth + 1
        start = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            _depth.n = depth
            if depth == 0:
                RECORD["intervals"].append([category, name, start, time.time()])
    return wrapper


def _noting_signal(original):
    def record_signal(self, strategy, symbol, *args, **kwargs):
        self.__dict__.setdefault("_bench_signals", []).append((strategy, symbol))
        return original(self, strategy, symbol, *args, **kwargs)
    return record_signal


def _timed_transaction(original):
    @contextmanager
    def transaction(self):
        depth = getattr(_depth, "n", 0)
        _depth.n = depth + 1
        start = time.time()
        tx_box: list[Any] = []
        try:
            with original(self) as tx:
                tx_box.append(tx)
                yield tx
        finally:
            _depth.n = depth
            end = time.time()
            if depth == 0:
                RECORD["intervals"].append(["journal", "transaction", start, end])
            for strategy, symbol in (tx_box[0].__dict__.get("_bench_signals", []) if tx_box else []):
                RECORD["signals"].append([strategy, symbol, end])
    return transaction


def _entry_noting(module) -> None:
    """Note when the flow's own code starts and ends (its `flow_run(...)` context) and the run's id."""
    original = module.flow_run

    @contextmanager
    def flow_run(*args, **kwargs):
        RECORD["flow_entered"] = time.time()
        try:
            with original(*args, **kwargs) as run:
                RECORD["flow_run_id"] = run.run_id
                yield run
        finally:
            RECORD["flow_exited"] = time.time()

    module.flow_run = flow_run


def instrument(flow_module, decisions: list[tuple[Any, str]]) -> None:
    """Note that the flow's imports are done and install the timers (module docstring). `decisions`: (object,
    attribute name) of each decision function to time."""
    RECORD["flows_imported"] = time.time()
    from core.ib_broker import IBBroker
    from core.journal import Journal, JournalTx

    for name in ("connect", "current_time", "account_values", "positions", "open_orders", "completed_orders",
                 "find_order", "place_order", "cancel_order", "wait_for_fill", "executions", "historical_bars",
                 "current_price", "vix"):
        setattr(IBBroker, name, _timed("broker", name, getattr(IBBroker, name)))
    JournalTx.record_signal = _noting_signal(JournalTx.record_signal)
    Journal.transaction = _timed_transaction(Journal.transaction)
    for owner, name in decisions:
        setattr(owner, name, _timed("decision", name, getattr(owner, name)))
    _entry_noting(flow_module)


def _write() -> None:
    path = os.environ.get("TRADEFLOW_BENCH_TIMINGS")
    if not path or "flow_entered" not in RECORD:  # e.g. the serving process, which only loads the flows
        return
    RECORD["exit"] = time.time()
    with open(path, "a") as fh:
        fh.write(json.dumps(RECORD) + "\n")


atexit.register(_write)
