"""Timed entrypoints of the deployments that `bench/schedule_to_action.py` serves: the real flows, unchanged, with
timers around what a run spends its time on. Not a benchmark (no `run`).

The served deployments use entrypoints `bench/_flow_timing.py:ema_entry` (and `:mtf_signal`), which ARE the flows
of `flows/` (the same objects); importing this module in the flow run's process first notes when the process was
created (/proc/self/stat, 10 ms resolution) and when this module started importing (Prefect is imported by
then), times the import of the flow modules, then wraps, by monkeypatching in this process only:

- every public method of `core.ib_broker.IBBroker` ("broker": the outermost call only, so `place_order`'s own
  look-ups are not counted twice);
- the decision functions as the flow modules call them ("decision": `decide_before_close` for ema-entry; for
  mtf-signal the features, the model's P(up) and the rule function);
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

import flows.ema_entry as _ema_entry_module  # noqa: E402  (timed: the flow modules and all they import)

try:  # the MTF flow, when this tree has it
    import flows.mtf_signal as _mtf_module  # noqa: E402
except ImportError:  # pragma: no cover - before the MTF flow exists
    _mtf_module = None
RECORD["flows_imported"] = time.time()

from core.ib_broker import IBBroker  # noqa: E402
from core.journal import Journal, JournalTx  # noqa: E402


def _timed(category: str, name: str, fn):
    """`fn` recording its calls as [category, name, start, end] when no other timed call encloses them (a call
    inside another counts for the outer one's category: `place_order`'s look-ups are broker time once, the clock
    reads inside another broker call count once)."""
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


for _name in ("connect", "current_time", "account_values", "positions", "open_orders", "completed_orders",
              "find_order", "place_order", "cancel_order", "wait_for_fill", "executions", "historical_bars",
              "current_price", "vix"):
    setattr(IBBroker, _name, _timed("broker", _name, getattr(IBBroker, _name)))

_record_signal = JournalTx.record_signal


def _noting_signal(self, strategy, symbol, *args, **kwargs):
    self.__dict__.setdefault("_bench_signals", []).append((strategy, symbol))
    return _record_signal(self, strategy, symbol, *args, **kwargs)


JournalTx.record_signal = _noting_signal
_transaction = Journal.transaction


@contextmanager
def _timed_transaction(self):
    depth = getattr(_depth, "n", 0)
    _depth.n = depth + 1
    start = time.time()
    tx_box: list[Any] = []
    try:
        with _transaction(self) as tx:
            tx_box.append(tx)
            yield tx
    finally:
        _depth.n = depth
        end = time.time()
        if depth == 0:
            RECORD["intervals"].append(["journal", "transaction", start, end])
        for strategy, symbol in (tx_box[0].__dict__.get("_bench_signals", []) if tx_box else []):
            RECORD["signals"].append([strategy, symbol, end])


Journal.transaction = _timed_transaction


def _entry_noting(module) -> None:
    """Note when the flow's own code starts (its `flow_run(...)` context is entered) and the run's id."""
    original = module.flow_run

    @contextmanager
    def flow_run(*args, **kwargs):
        RECORD["flow_entered"] = time.time()
        with original(*args, **kwargs) as run:
            RECORD["flow_run_id"] = run.run_id
            yield run

    module.flow_run = flow_run


_entry_noting(_ema_entry_module)
_ema_entry_module.decide_before_close = _timed("decision", "decide_before_close",
                                               _ema_entry_module.decide_before_close)
ema_entry = _ema_entry_module.ema_entry

if _mtf_module is not None:
    _entry_noting(_mtf_module)
    mtf_signal = _mtf_module.mtf_signal


def _write() -> None:
    path = os.environ.get("TRADEFLOW_BENCH_TIMINGS")
    if not path or "flow_entered" not in RECORD:  # e.g. the serving process, which only loads the flows
        return
    RECORD["exit"] = time.time()
    with open(path, "a") as fh:
        fh.write(json.dumps(RECORD) + "\n")


atexit.register(_write)
