"""`retrain` for 8 symbols with its per-symbol work on a Dask cluster: one worker host against two (issue #15).

Hosts are network namespaces on one machine (`tests/hosts_support.py`'s `TestNet`): the Dask scheduler on host
`sched`, one Dask worker on host `a` (one host) or one on each of `a` and `b` (two hosts), every worker one process
with ONE thread (`deployments.processes.dask_worker_argv`). This machine has 2 cores, so one 1-thread worker
against two 1-thread workers is the fair comparison: each arm's workers have a core each, and what the second host
adds is a second core's worth of training. On real hosts (each with its own cores) the two-host arm has twice the
cores instead; here the flow's process, the paper exchange, the Prefect server and whatever else the machine runs
share the same 2 cores, so the ratio is a lower bound of what two real hosts give.

Symbols `S01` … `S08`, made as `bench/mtf_signal_scale.py` makes them: links to the real AAPL (odd) and TSLA (even)
hourly bars, so every symbol costs what a real one costs. No champions: each symbol's challenger is trained,
walked forward and evaluated, and becomes champion (the decision path is the same whatever the champion).

Each arm: a fresh state folder whose bar store already holds the hourly bars up to `as_of` (so the run's store
update asks the paper exchange for almost nothing), an empty model registry, a fresh journal; the paper exchange
(clock at `as_of`) and the Prefect server in the root namespace on the net's bridge address (the workers report
their task runs to it); the flow in a child process of the root namespace (`bench/_retrain_run.py`) with
`TRADEFLOW_DASK_SCHEDULER` naming the scheduler. Before each arm every worker has imported TensorFlow and the
training code (a warm-up), so neither arm pays that import inside its time.

Figures: `one_host_s` and `two_hosts_s` (the flow's own wall time, imports excluded), `speedup` (one / two), the
run processes' wall times, and the tasks each worker ran. Needs root (network namespaces); raises otherwise.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import data_dir, make_result
from bench.mtf_signal_scale import build_data_dir, source_of, symbol_names

NAME = "retrain_fanout"
ROOT = Path(__file__).resolve().parents[1]
AS_OF = "2026-03-02T10:00:00-05:00"
"""The retrain's time: evaluation month February 2026 (as tests/test_retrain.py)."""


def _build_store(real: Path, root: Path, names: list[str], as_of: datetime, history_months: int) -> None:
    """Each symbol's hourly bars from a week before the history the run needs up to `as_of` (its source's real
    file), as a previous month's runs would have left the store."""
    import pandas as pd

    from core.bar_store import BarStore
    from core.bars import load_hourly_bars
    from models.retrain import evaluation_month

    need_from = evaluation_month(as_of).start - pd.DateOffset(months=history_months) - timedelta(days=7)
    store, cache = BarStore(root), {}
    for name in names:
        src = source_of(name)
        if src not in cache:
            bars = load_hourly_bars(real, src)
            cache[src] = bars[(bars.index >= need_from) & (bars.index + timedelta(hours=1) <= as_of)]  # ended bars
        store.save(name, cache[src])


def _warm_up(address: str, n_workers: int) -> dict[str, int]:
    """Wait for `n_workers` workers, make each import TensorFlow/Keras and the training code; returns the tasks
    each has executed so far (by worker name)."""
    import distributed

    from deployments.processes import dask_tasks_executed, wait_for_dask_workers

    wait_for_dask_workers(address, n_workers, timeout=180)
    with distributed.Client(address, timeout=60, set_as_default=False) as client:
        client.run(lambda: bool(__import__("keras") and __import__("models.pipeline")
                                and __import__("models.walkforward")))
    return dask_tasks_executed(address)


def _run_arm(label: str, work: Path, store: Path, names: list[str], env: dict[str, str], data: Path,
             options: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One retrain run for `names` in a child process against a fresh state; returns its figures. The state's
    journal (with the model registry the workers write challengers to) is served, as the server role serves it, on
    env's TRADEFLOW_JOURNAL_SERVER, which the flow and the Dask workers reach over the bridge."""
    from core.journal.remote import parse_address
    from core.paper_exchange import PaperExchange
    from deployments.processes import Child, port_open, wait_for

    state = work / f"state-{label}"
    state.mkdir()
    shutil.copytree(store, state / "bars")
    host, port = parse_address(env["TRADEFLOW_JOURNAL_SERVER"])
    journal = Child(f"journal server ({label})", [sys.executable, "-m", "core.journal.server",
                                                  str(state / "journal.duckdb"), "--bind", host, "--port", str(port),
                                                  "--idle", "0"], work / f"journal-{label}.log", env=env,
                    cwd=ROOT).start()
    wait_for(lambda: port_open(host, port) or not journal.alive(), 60, f"the journal server of {label}")
    exchange = PaperExchange(data, start=datetime.fromisoformat(AS_OF), state_file=state / "exchange.json").start()
    try:
        child_env = {**env, "IBKR_PORT": str(exchange.port), "TRADEFLOW_STATE_DIR": str(state)}
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "bench._retrain_run", AS_OF, ",".join(names),
                              json.dumps(options)], cwd=ROOT, env=child_env, capture_output=True, text=True,
                             timeout=timeout)
        wall = time.perf_counter() - t0
        load = (load_before + os.getloadavg()[0]) / 2
    finally:
        exchange.stop()
        journal.stop(timeout=30)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"retrain ({label}) exited {out.returncode}:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    res = json.loads(lines[-1])
    if res["type"] != "COMPLETED" or len(res["decisions"]) != len(names) or not all(
            d["trained"] for d in res["decisions"]):
        raise RuntimeError(f"retrain ({label}) ended {res['type']}: {res['message']} ({res['decisions']})")
    return {"flow_s": res["flow_s"], "process_s": wall, "decisions": res["decisions"], "load": load}


def run(symbols: int = 8, epochs: int = 1, lstm_units: tuple[int, ...] = (16,), wf_folds: int = 2,
        wf_epochs: int = 1, history_months: int = 13, timeout: float = 3600.0) -> dict[str, Any]:
    """Run the benchmark (module docstring): `symbols` symbols, the same training options for both arms.

    Raises:
        RuntimeError: no network namespaces here (not root, no iproute2), or a run did not complete.
    """
    from deployments.processes import (Child, LocalServer, api_healthy, dask_scheduler_argv, dask_tasks_executed,
                                       dask_worker_argv, wait_for)
    from tests.hosts_support import TestNet, free_port_on, hosts_available

    why = hosts_available()
    if why:
        raise RuntimeError(f"{NAME} needs test hosts (network namespaces): {why}")
    names = symbol_names(symbols)
    real = data_dir()
    options = {"history_months": history_months, "epochs": epochs, "lstm_units": list(lstm_units),
               "wf_folds": wf_folds, "wf_epochs": wf_epochs}
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-retrain-fanout-")))
        net = stack.enter_context(TestNet.create(["sched", "a", "b"]))
        gateway = net.gateway_address
        prefect_port = free_port_on(gateway)
        server = LocalServer(work / "prefect-home", prefect_port, work / "server.log", ui=False)
        api_url = f"http://{gateway}:{prefect_port}/api"
        server_env = {**server.env(), "PREFECT_API_URL": api_url, "PREFECT_UI_URL": api_url[:-4]}
        server.home.mkdir(parents=True)
        prefect = Child("Prefect server", [sys.executable, "-m", "deployments.prefect_server", "--host", gateway,
                                           "--port", str(prefect_port)], server.log_path, env=server_env).start()
        stack.callback(prefect.stop, 30)
        wait_for(lambda: api_healthy(api_url) or not prefect.alive(), 120, f"the Prefect server at {api_url}")
        if not prefect.alive():
            raise RuntimeError(f"the Prefect server exited: {prefect.log_tail()}")

        data = build_data_dir(real, work / "bars", names)
        store = work / "store"
        _build_store(real, store, names, datetime.fromisoformat(AS_OF), history_months)
        env = {**{k: v for k, v in os.environ.items()
                  if not k.startswith(("PREFECT_", "TRADEFLOW_")) and k != "PYTHONDONTWRITEBYTECODE"},
               "PREFECT_API_URL": api_url, "IBKR_HOST": "127.0.0.1", "TRADEFLOW_DATA_DIR": str(data),
               "TF_CPP_MIN_LOG_LEVEL": "2",
               # the journal (and the model registry in it) of each arm, served on the bridge as the server role
               # serves it: the workers in their namespaces cannot reach a writer on the root namespace's loopback
               "TRADEFLOW_JOURNAL_SERVER": f"{gateway}:{free_port_on(gateway)}",
               "TRADEFLOW_JOURNAL_TOKEN": secrets.token_hex(16)}

        sched = net["sched"]
        port = free_port_on(sched.address, sched.netns)
        address = f"tcp://{sched.address}:{port}"
        sched.popen(dask_scheduler_argv(sched.address, port), work / "dask-scheduler.log", env=env, cwd=ROOT)
        env["TRADEFLOW_DASK_SCHEDULER"] = address
        net["a"].popen(dask_worker_argv(address, 1, net["a"].address, "a"), work / "dask-worker-a.log", env=env,
                       cwd=ROOT)
        before = _warm_up(address, 1)
        one = _run_arm("one-host", work, store, names, env, data, options, timeout)
        after_one = dask_tasks_executed(address)
        net["b"].popen(dask_worker_argv(address, 1, net["b"].address, "b"), work / "dask-worker-b.log", env=env,
                       cwd=ROOT)
        before_two = _warm_up(address, 2)
        two = _run_arm("two-hosts", work, store, names, env, data, options, timeout)
        after_two = dask_tasks_executed(address)

    if [d["symbol"] for d in one["decisions"]] != [d["symbol"] for d in two["decisions"]]:
        raise RuntimeError(f"the arms retrained different symbols: {one['decisions']} / {two['decisions']}")
    figures = {"symbols": symbols, "one_host_s": one["flow_s"], "two_hosts_s": two["flow_s"],
               "speedup": one["flow_s"] / two["flow_s"], "one_host_process_s": one["process_s"],
               "two_hosts_process_s": two["process_s"], "one_host_load_avg_1min": one["load"],
               "two_hosts_load_avg_1min": two["load"],
               "one_host_tasks_a": after_one.get("a", 0) - before.get("a", 0),
               "two_hosts_tasks_a": after_two.get("a", 0) - before_two.get("a", 0),
               "two_hosts_tasks_b": after_two.get("b", 0) - before_two.get("b", 0)}
    notes = [
        "hosts are network namespaces of one machine with 2 cores: one 1-thread Dask worker (host a) against two "
        "1-thread workers (hosts a and b), the scheduler on a third namespace; the fair comparison on 2 cores "
        "(each worker a core); the flow, paper exchange and Prefect server share those cores, as do other "
        "processes running on the machine then (see run.machine.load_avg_1min)",
        f"symbols S01..S{symbols:02d}: links to the real AAPL (odd) and TSLA (even) hourly bars "
        "(bench/mtf_signal_scale.py); no champions, so each challenger is trained, walked forward and evaluated",
        f"the same training for both arms: epochs {epochs}, LSTM units {list(lstm_units)}, walk-forward "
        f"{wf_folds} folds of at most {wf_epochs} epochs, {history_months} months of history (smaller than the "
        "monthly run's defaults so the benchmark takes minutes; the per-symbol share grows with the defaults)",
        "one_host_s / two_hosts_s: the retrain flow's own wall time in its process (Python and TensorFlow imports "
        "excluded; workers warmed up before each arm); *_process_s: the run's process start to exit; "
        "speedup = one_host_s / two_hosts_s; *_tasks_*: retrain_one tasks each worker ran in that arm; "
        "*_load_avg_1min: the machine's 1-minute load average at the arm's start and end, averaged (on a machine "
        "shared with other work, a ratio from arms run under different loads is skewed by the difference)",
    ]
    config = {"symbols": names, "as_of": AS_OF, **options, "worker_threads": 1, "cpus": os.cpu_count()}
    return make_result(NAME, f"retrain for {symbols} symbols on one Dask worker host against two", figures, {},
                       config, notes)
