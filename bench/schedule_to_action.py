"""Schedule to action: deployments on a real Prefect server against the paper exchange, served and run by a
process worker, from a run's scheduled start to its action: `ema-entry`'s order received by the exchange (target
p95 <= 2 s, on both paths) and `mtf-signal`'s decisions for both symbols committed to the journal (target p95 <= 3 s,
served).

Set-up (all on loopback, in a temporary folder):
- `prefect server start` (`deployments.processes.LocalServer`, SQLite in a temporary PREFECT_HOME);
- one Prefect runner (`prefect.serve`, `bench/_serving.py`) serving the real flows through timed entrypoints
  (`bench/_timed_ema_entry.py`, `bench/_timed_mtf_signal.py`: the same flow objects, with the timers of
  `bench/_flow_timing.py`) and `flows/ema_update.py`. It asks the API every `query_seconds` (1 s) for runs due
  within `prefetch_seconds` (10 s, Prefect's default) and starts each in a process of its own, as a worker does:
  so a run's process starts and imports before its time, and Prefect's server holds it (its orchestration rule
  `WaitForScheduledTime`) until the scheduled start, when the flow's code begins. `cold_runs` more ema-entry runs
  are served with prefetch 0 (the process starts once the run is due: an ad hoc run, or a worker that cannot
  prefetch), to show what starting a process costs;
- the path `tradeflow up` (and every worker host) runs: the timed ema-entry applied by `deployments.deploy.apply`
  (deployment `ema-entry/ema-entry` on a process work pool, concurrency limit 1) and a real `prefect worker start
  --type process` (`deployments.processes.worker_argv`), with `tradeflow up`'s settings
  (`deployments.processes.worker_env`: polls every 2 s, takes runs 20 s ahead; `worker_ema_entry_*`) and with
  Prefect's defaults (10 s and 10 s; `worker_defaults_ema_entry_*`). The worker takes a run at its first poll
  after `scheduled - prefetch` and starts its process at once; the server holds it as above. Each run is created
  prefetch + query + 1 s plus a random part of the query interval ahead, so the polls meet scheduled times at any
  phase, as the calendar's times do;
- the paper exchange in this process, restarted for each run on the same port with a fresh account; its clock
  runs with the wall clock so that it reads the run's `as_of` at the scheduled start, where it stops (the paper
  exchange fills a market order at the open of the first bar that starts at or after the order: the 15:55 bar).
  A hook on its order intake notes the wall-clock instant each order arrives.

Each run is a flow run created through the API from its deployment, `Scheduled` `prefetch_seconds` + 1 s ahead
(2 s for the cold runs), with the replayed `as_of` as its parameter: 2026-03-02 15:55 for ema-entry (BULL and
flat: it buys), 10:35 for mtf-signal (the 09:30 hourly bar has just ended; champions for AAPL and TSLA trained
here with `tradeflow train --epochs 1`). Every run starts from the same journal, a template holding the EMA state
up to the previous session (written by one served `ema-update` run) and the models' records. Each series starts
with a warm-up run that is not counted (it fills the disk cache, the bytecode cache and mtf-signal's bar store:
the measured mtf-signal runs, at the same `as_of`, then have no new hourly bar to ask for).

Breakdown of each run's latency (scheduled start -> action), from the instants its process noted and the
exchange's arrival time; work done before the scheduled start counts for nothing:
- `pickup`: until the run's process exists (the runner's poll and spawn);
- `python_prefect`: the interpreter and Prefect's import and the flow run's look-up, until the entrypoint runs;
- `flow_imports`: importing the flow module and all it imports (pandas, the calendar, ib_insync, duckdb ...);
- `engine`: Prefect's engine until the flow's code starts (the run set Running: the hold until the scheduled
  start, then the API calls);
- `broker`: inside IBBroker calls (connect, clock, executions, bars, quotes, account, positions; placing, up to
  the order's arrival);
- `decision`: the decision functions (pure computation: ema-entry's rule; mtf-signal's features, P(up), rule);
- `journal`: journal transactions (writer lock, write, commit, checkpoint, read-snapshot refresh);
- `other`: the rest (Prefect task runs, logging, artifacts, Python between the calls).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from bench.common import Target, data_dir, make_result, percentile

NAME = "schedule_to_action"
ROOT = Path(__file__).resolve().parents[1]
NY_OFFSET = "-05:00"
EMA_SESSION_AS_OF = "2026-03-02T15:55:00-05:00"
TEMPLATE_AS_OF = "2026-02-27T16:00:00-05:00"
TEMPLATE_CLOCK = "2026-02-27T16:06:00-05:00"  # after the close + the 300 s the daily bar takes to be final
ENTRY_REF = "ema-SMH-20260302-entry"
MTF_AS_OF = "2026-03-02T10:35:00-05:00"  # the 09:30 hourly bar has just ended
MTF_SYMBOLS = ("AAPL", "TSLA")
WORKER_POOL = "bench-process"
PHASES = ("pickup", "python_prefect", "flow_imports", "engine", "broker", "decision", "journal", "other")


def _aware(text: str) -> datetime:
    return datetime.fromisoformat(text)


class _Exchange:
    """The paper exchange of the benchmark: restarted on the same port with a fresh account for each run."""

    def __init__(self, data: Path, work: Path, port: int):
        self.data, self.work, self.port = data, work, port
        self.current = None
        self.received: dict[str, float] = {}
        self.count = 0
        self.timer: threading.Timer | None = None

    def restart(self, as_of: datetime, scheduled: float | None = None) -> None:
        """A new exchange with a fresh account whose clock reads `as_of` at the wall-clock instant `scheduled`
        (epoch seconds): running in step with the wall clock until then, stopped there (the paper exchange fills
        a market order at the open of the first bar that starts at or after it was placed: 15:55:00 is that of
        the 15:55 bar). Without `scheduled`, stopped at `as_of`."""
        from core.paper_exchange import AdminClient, PaperExchange

        self.stop()
        self.count += 1
        if scheduled is None:
            start, speed = as_of, None
        else:
            start, speed = as_of - timedelta(seconds=scheduled - time.time()), 1.0
        ex = PaperExchange(self.data, start=start, speed=speed, port=self.port,
                           state_file=self.work / f"exchange-{self.count}.json").start()
        if scheduled is not None:
            self.timer = threading.Timer(max(0.0, scheduled - time.time()) + 0.01,
                                         AdminClient(ex.admin_port).pause)
            self.timer.start()
        original = ex.engine.place

        def place(**kwargs):
            self.received.setdefault(kwargs["order_ref"], time.time())
            return original(**kwargs)

        ex.engine.place = place
        self.current = ex

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.current is not None:
            self.current.stop()
            self.current = None


def _copy_journal(src: Path, dst: Path) -> None:
    """Make dst's journal a copy of src's. Each journal's writer process is stopped first (it holds its file open
    and checkpoints it as it exits), so the copy is the whole file and the next run starts a writer on it."""
    from core.journal import Journal
    from core.journal.server import JournalFiles

    dst.mkdir(parents=True, exist_ok=True)
    for folder in (src, dst):
        if (folder / "journal.duckdb").exists():
            Journal(folder / "journal.duckdb").stop_writer()
    files = JournalFiles(dst / "journal.duckdb")
    for target in (files.path, files.wal, files.snapshot, files.snapshot_meta):
        target.unlink(missing_ok=True)
    if (src / "journal.duckdb").exists():
        shutil.copyfile(src / "journal.duckdb", files.path)


def _wait_final(client, run_id, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        run = client.read_flow_run(run_id)
        if run.state is not None and run.state.is_final():
            return run
        if time.monotonic() > deadline:
            raise TimeoutError(f"flow run {run_id} not final after {timeout:g} s (state {run.state})")
        time.sleep(0.1)  # polling interval of a condition wait


def _timings(path: Path) -> dict[str, dict[str, Any]]:
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        out[rec["flow_run_id"]] = rec
    return out


def _overlap(a: float, b: float, lo: float, hi: float) -> float:
    return max(0.0, min(b, hi) - max(a, lo))


def breakdown(scheduled: float, action: float, rec: dict[str, Any]) -> dict[str, float]:
    """Where the time from the scheduled start to the action went (seconds of each of PHASES, adding up to the
    latency), from a run's timing record (`bench/_flow_timing.py`) and the action's instant (epoch seconds).
    Work done before the scheduled start (a run started ahead of its time by the runner's prefetch) counts for
    nothing: only what is left after it."""
    entered = rec["flow_entered"]
    phases = {
        "pickup": _overlap(scheduled, rec["process_start"], scheduled, action),
        "python_prefect": _overlap(rec["process_start"], rec["module_start"], scheduled, action),
        "flow_imports": _overlap(rec["module_start"], rec["flows_imported"], scheduled, action),
        "engine": _overlap(rec["flows_imported"], entered, scheduled, action),
    }
    lo = max(scheduled, entered)
    for category in ("broker", "decision", "journal"):
        phases[category] = sum(_overlap(a, b, lo, action) for c, _, a, b in rec["intervals"] if c == category)
    phases["other"] = max(0.0, action - scheduled) - sum(phases.values())
    return phases


def figures_of(prefix: str, runs: list[tuple[float, float, dict[str, Any]]]) -> dict[str, float]:
    """The figures of one deployment's runs, each (scheduled start, action, timing record): latency (action -
    scheduled) p50/p95/max, its split into PHASES (p50 seconds and share of all the runs' latency), and when the
    process started and finished importing relative to the schedule (negative: before it)."""
    latencies = [a - s for s, a, _ in runs]
    parts = [breakdown(s, a, r) for s, a, r in runs]
    total = sum(sum(p.values()) for p in parts) or 1.0
    out: dict[str, float] = {
        f"{prefix}_runs": len(runs),
        f"{prefix}_p50_s": statistics.median(latencies), f"{prefix}_p95_s": percentile(latencies, 95),
        f"{prefix}_max_s": max(latencies),
        f"{prefix}_process_started_vs_schedule_p50_s": statistics.median(r["process_start"] - s for s, _, r in runs),
        f"{prefix}_process_started_vs_schedule_max_s": max(r["process_start"] - s for s, _, r in runs),
        f"{prefix}_imports_done_vs_schedule_p50_s": statistics.median(r["flows_imported"] - s for s, _, r in runs),
        f"{prefix}_imports_done_vs_schedule_max_s": max(r["flows_imported"] - s for s, _, r in runs),
        f"{prefix}_process_to_action_p50_s": statistics.median(a - r["process_start"] for _, a, r in runs),
        # the flow's code begins when the server lets the run go Running, which it rounds to whole seconds
        f"{prefix}_flow_started_vs_schedule_min_s": min(r["flow_entered"] - s for s, _, r in runs),
        f"{prefix}_flow_started_vs_schedule_p50_s": statistics.median(r["flow_entered"] - s for s, _, r in runs),
        f"{prefix}_flows_started_early": sum(r["flow_entered"] < s for s, _, r in runs),
        f"{prefix}_actions_before_schedule": sum(a < s for s, a, _ in runs),
    }
    for k in PHASES:
        out[f"{prefix}_{k}_p50_s"] = statistics.median(p[k] for p in parts)
    for k in PHASES:
        out[f"{prefix}_{k}_share"] = sum(p[k] for p in parts) / total
    return out


class _Bench:
    """The server, the exchange, the journal template and the serving processes of one benchmark run."""

    def __init__(self, stack: ExitStack, query_seconds: float, run_timeout: float):
        from deployments.processes import LocalServer, free_port
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        self.stack, self.query_seconds, self.run_timeout = stack, query_seconds, run_timeout
        self.work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-stta-")))
        server = LocalServer(self.work / "prefect-home", free_port(), self.work / "server.log", ui=False)
        server.start()
        stack.callback(server.stop)
        self.state, self.template = self.work / "state", self.work / "template"
        self.timings = self.work / "timings.jsonl"
        data = data_dir()
        port = free_port()
        self.exchange = _Exchange(data, self.work, port)
        stack.callback(self.exchange.stop)
        # the flow processes may cache bytecode, as a deployed system does (this machine's environment sets
        # PYTHONDONTWRITEBYTECODE, which makes every process compile its ~900 modules from source)
        self.env = {**{k: v for k, v in os.environ.items()
                       if not k.startswith("PREFECT_") and k != "PYTHONDONTWRITEBYTECODE"},
                    "PREFECT_API_URL": server.api_url, "PREFECT_HOME": str(self.work / "prefect-home"),
                    "IBKR_HOST": "127.0.0.1", "IBKR_PORT": str(port), "TRADEFLOW_STATE_DIR": str(self.state),
                    "TRADEFLOW_DATA_DIR": str(data), "TRADEFLOW_BENCH_TIMINGS": str(self.timings)}
        stack.enter_context(temporary_settings({PREFECT_API_URL: server.api_url}))
        self.client = stack.enter_context(get_client(sync_client=True))
        self.deployments: dict[str, Any] = {}
        self.serving: subprocess.Popen | None = None
        self.worker: Any = None  # deployments.processes.Child of the process worker, when that path runs

    def serve(self, name: str, entrypoints: list[str], prefetch_seconds: float) -> None:
        """(Re)start the serving process: `entrypoints` as deployments `<flow>/<name>`."""
        self.stop_serving()
        log = self.work / f"serve-{name}.log"
        self.serving = subprocess.Popen(
            [sys.executable, "-m", "bench._serving", name, *entrypoints, "--query-seconds", str(self.query_seconds),
             "--prefetch-seconds", str(prefetch_seconds)], cwd=ROOT, env=self.env, stdout=open(log, "wb"),
            stderr=subprocess.STDOUT)
        self.log = log
        self.stack.callback(self.stop_serving)
        flows = [f"{ep.rsplit(':', 1)[1].replace('_', '-')}/{name}" for ep in entrypoints]
        self.deployments.update(_wait_deployments(self.client, flows, self.serving, log))

    def start_worker(self, name: str, entrypoints: dict[str, str], query_seconds: float,
                     prefetch_seconds: float) -> None:
        """(Re)start the process-worker path as `tradeflow up` runs it: `entrypoints` (deployment name ->
        entrypoint) applied by `deployments.deploy.apply` (deployments `<name>/<name>`, concurrency limit 1) to the
        process work pool `name`, and a `prefect worker start --type process` (`worker_argv`) polling it every
        `query_seconds`, taking runs `prefetch_seconds` ahead; each run a process of its own in the project folder."""
        from deployments.deploy import DeploymentSpec, apply, run
        from deployments.processes import Child, worker_argv

        self.stop_serving()
        specs = [DeploymentSpec(d, ep, "schedule_to_action benchmark", ()) for d, ep in entrypoints.items()]
        ids = run(apply(specs, project_dir=ROOT, work_pool=name)).ids
        self.deployments.update({f"{d}/{d}": i for d, i in ids.items()})
        self.log = self.work / f"worker-{name}-{query_seconds:g}-{prefetch_seconds:g}.log"
        env = {**self.env, "PREFECT_WORKER_QUERY_SECONDS": f"{query_seconds:g}",
               "PREFECT_WORKER_PREFETCH_SECONDS": f"{prefetch_seconds:g}"}
        self.worker = Child("worker", worker_argv(name), self.log, env=env, cwd=ROOT).start()
        self.stack.callback(self.stop_serving)

    def stop_serving(self) -> None:
        """Stop the serving process or the worker, whichever runs."""
        if self.worker is not None:
            self.worker.stop(timeout=30)
            self.worker = None
        if self.serving is not None and self.serving.poll() is None:
            self.serving.terminate()
            try:
                self.serving.wait(30)
            except subprocess.TimeoutExpired:
                self.serving.kill()
                self.serving.wait(10)
        self.serving = None

    def run_once(self, deployment: str, as_of: str, lead_seconds: float, clock: datetime | None = None
                 ) -> tuple[float, Any]:
        """One run of `deployment` scheduled `lead_seconds` from now; the exchange's clock reads `as_of` then (or
        stands at `clock`). Returns the scheduled start (epoch seconds) and the final flow run.

        Raises:
            RuntimeError: the run did not complete (with the end of the serving log).
        """
        from prefect.states import Scheduled

        scheduled = datetime.now(timezone.utc) + timedelta(seconds=lead_seconds)
        if clock is None:
            self.exchange.restart(_aware(as_of), scheduled.timestamp())
        else:
            self.exchange.restart(clock)
        created = self.client.create_flow_run_from_deployment(
            self.deployments[deployment], parameters={"as_of": as_of}, state=Scheduled(scheduled_time=scheduled))
        final = _wait_final(self.client, created.id, self.run_timeout)
        if not final.state.is_completed():
            raise RuntimeError(f"{deployment} run {created.id} ended {final.state.name}: {final.state.message}; "
                               f"the serving log ends:\n{self.log.read_text()[-4000:]}")
        return scheduled.timestamp(), final

    def make_template(self) -> None:
        """The journal every ema-entry run starts from: the EMA state up to 2026-02-27, written by one served
        ema-update run."""
        self.run_once("ema-update/bench", TEMPLATE_AS_OF, 1.0, _aware(TEMPLATE_CLOCK))
        _copy_journal(self.state, self.template)

    def mtf_signal_runs(self, deployment: str, n: int, lead_seconds: float) -> list[tuple[float, float, dict]]:
        """`n` measured runs after a warm-up run (which also fills the bar store): (scheduled start, the last of
        the decisions of MTF_SYMBOLS committed to the journal, timing record) each."""
        out = []
        for i in range(n + 1):
            _copy_journal(self.template, self.state)
            scheduled, final = self.run_once(deployment, MTF_AS_OF, lead_seconds)
            rec = _wait_record(self.timings, str(final.id))
            decided = {sym: t for strategy, sym, t in rec["signals"] if strategy == "mtf"}
            if set(decided) != set(MTF_SYMBOLS):
                raise RuntimeError(f"mtf-signal run {final.id} journaled decisions for {sorted(decided)}")
            if i > 0:
                out.append((scheduled, max(decided.values()), rec))
        return out

    def ema_entry_runs(self, deployment: str, n: int, lead_seconds: float, jitter_seconds: float = 0.0
                       ) -> list[tuple[float, float, dict]]:
        """`n` measured runs after a warm-up run: (scheduled start, order received, timing record) each. Each run
        is created `lead_seconds` plus a random part of `jitter_seconds` ahead (a worker's polls then meet the
        scheduled times at any phase, as calendar times do)."""
        out = []
        for i in range(n + 1):
            _copy_journal(self.template, self.state)
            self.exchange.received.clear()
            lead = lead_seconds + random.uniform(0.0, jitter_seconds)
            scheduled, final = self.run_once(deployment, EMA_SESSION_AS_OF, lead)
            if ENTRY_REF not in self.exchange.received:
                raise RuntimeError(f"ema-entry run {final.id} sent no order")
            rec = _wait_record(self.timings, str(final.id))
            if i > 0:  # the first run warms the caches (disk, bytecode, server): not counted
                out.append((scheduled, self.exchange.received[ENTRY_REF], rec))
        return out


def run(runs: int = 20, cold_runs: int = 5, mtf_runs: int = 20, query_seconds: float = 1.0,
        prefetch_seconds: float = 10.0, run_timeout: float = 120.0, worker_runs: int = 20,
        worker_query_seconds: float | None = None, worker_prefetch_seconds: float | None = None,
        default_worker_runs: int = 10) -> dict[str, Any]:
    """Run the benchmark (module docstring): `runs` ema-entry runs served with Prefect's prefetch
    (`prefetch_seconds`, runs created `prefetch_seconds` + 1 s ahead), `cold_runs` more whose process starts only
    once they are due (prefetch 0, created 2 s ahead), `mtf_runs` mtf-signal runs (0 to skip), `worker_runs`
    ema-entry runs through a process worker with `tradeflow up`'s settings (`deployments.processes.worker_env`,
    or `worker_query_seconds` / `worker_prefetch_seconds`), and `default_worker_runs` through one with Prefect's
    defaults (query 10 s, prefetch 10 s); each series after a warm-up run that is not counted.

    Raises:
        RuntimeError: a run did not complete, or an ema-entry run sent no order.
    """
    from bench._models import train_champions
    from deployments.processes import WORKER_PREFETCH_SECONDS, WORKER_QUERY_SECONDS

    up_query = WORKER_QUERY_SECONDS if worker_query_seconds is None else worker_query_seconds
    up_prefetch = WORKER_PREFETCH_SECONDS if worker_prefetch_seconds is None else worker_prefetch_seconds

    with ExitStack() as stack:
        bench = _Bench(stack, query_seconds, run_timeout)
        ema_entry = "bench/_timed_ema_entry.py:ema_entry"
        entrypoints = [ema_entry, "flows/ema_update.py:ema_update"]
        if mtf_runs:
            train_champions(bench.state, MTF_SYMBOLS, epochs=1)
            entrypoints.append("bench/_timed_mtf_signal.py:mtf_signal")
        bench.serve("bench", entrypoints, prefetch_seconds)
        bench.make_template()
        ema = bench.ema_entry_runs("ema-entry/bench", runs, prefetch_seconds + 1.0)
        mtf = bench.mtf_signal_runs("mtf-signal/bench", mtf_runs, prefetch_seconds + 1.0) if mtf_runs else []
        cold = []
        if cold_runs:
            bench.serve("cold", [ema_entry], 0.0)
            cold = bench.ema_entry_runs("ema-entry/cold", cold_runs, 2.0)
        worker: dict[str, list] = {}
        for prefix, n, query, prefetch in (("worker_ema_entry", worker_runs, up_query, up_prefetch),
                                           ("worker_defaults_ema_entry", default_worker_runs, 10.0, 10.0)):
            if n:
                # created before the first poll that can take it, at a random phase of the worker's polls
                bench.start_worker(WORKER_POOL, {"ema-entry": ema_entry}, query, prefetch)
                worker[prefix] = bench.ema_entry_runs("ema-entry/ema-entry", n, prefetch + query + 1.0, query)

    figures = figures_of("ema_entry", ema)
    targets = {"ema_entry_p95_s": Target("<=", 2.0)}
    for prefix, measured in worker.items():
        figures.update(figures_of(prefix, measured))
    if "worker_ema_entry" in worker:
        targets["worker_ema_entry_p95_s"] = Target("<=", 2.0)
    if mtf:
        figures.update(figures_of("mtf_signal", mtf))
        targets["mtf_signal_p95_s"] = Target("<=", 3.0)
    if cold:
        figures.update(figures_of("ema_entry_cold", cold))
    notes = [
        "latency = the wall-clock instant the exchange received the order (mtf-signal: the last of its decisions "
        "committed to the journal) minus the run's scheduled start; p50/p95/max over the measured runs",
        f"served runs: the runner queries the API every {query_seconds:g} s and starts a run due within "
        f"{prefetch_seconds:g} s (Prefect's default prefetch), so its process starts and imports before its time; "
        "Prefect's server holds it (orchestration rule WaitForScheduledTime) until the scheduled start, when the "
        "flow's code begins. *_cold: prefetch 0, the process starts once the run is due (an ad hoc run)",
        "breakdown of each latency into " + ", ".join(PHASES) + " (module docstring); *_share: share of the "
        "runs' total latency; work done before the scheduled start counts for nothing",
        "each ema-entry run: a fresh exchange account (same port) and the template journal (EMA state to "
        "2026-02-27), as_of 2026-03-02 15:55 (BULL and flat: a BUY order every run)",
        f"each mtf-signal run: {', '.join(MTF_SYMBOLS)} with champions trained here (tradeflow train --epochs 1), "
        f"as_of {MTF_AS_OF} (the 09:30 hourly bar just ended), a fresh account and the template journal; the bar "
        "store filled by the warm-up run, so that the measured runs (the same as_of) find no new hourly bar due "
        "and ask the broker for none, as 11 of the 12 runs of an hour do (mtf_signal_scale measures the run "
        "after a bar's end, which asks once a symbol)",
    ]
    if worker:
        notes.append(
            f"worker_*: the path tradeflow up runs: the deployment applied by deployments.deploy.apply to a process "
            f"work pool, a `prefect worker start --type process` taking each run at its first poll after "
            f"scheduled - prefetch and starting its process at once; worker_ema_entry with tradeflow up's settings "
            f"(query {up_query:g} s, prefetch {up_prefetch:g} s), worker_defaults_ema_entry with Prefect's (10 s, "
            f"10 s). Each run created prefetch + query + 1 s + U(0, query) ahead, so the polls meet it at any phase")
    notes.append("*_flow_started_vs_schedule: the flow's code begins when Prefect's server accepts Running, which "
                 "it rounds to whole seconds (WaitForScheduledTime): up to 0.5 s before the scheduled time; "
                 "*_flows_started_early / *_actions_before_schedule count the runs whose flow / action came before it")
    config = {"runs": runs, "cold_runs": cold_runs, "mtf_runs": mtf_runs, "query_seconds": query_seconds,
              "prefetch_seconds": prefetch_seconds, "worker_runs": worker_runs,
              "worker_query_seconds": up_query, "worker_prefetch_seconds": up_prefetch,
              "default_worker_runs": default_worker_runs,
              "ema_as_of": EMA_SESSION_AS_OF, "mtf_as_of": MTF_AS_OF}
    return make_result(NAME, "scheduled start to action of served deployments and of deployments run by a process "
                             "worker (ema-entry order, mtf-signal decisions)", figures, targets, config, notes)


def _wait_deployments(client, names: list[str], serving: subprocess.Popen, log: Path,
                      timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    found: dict[str, Any] = {}
    while len(found) < len(names):
        if serving.poll() is not None:
            raise RuntimeError(f"the serving process exited: {log.read_text()[-3000:]}")
        for name in names:
            if name not in found:
                try:
                    found[name] = client.read_deployment_by_name(name).id
                except Exception:  # noqa: BLE001 - not registered yet
                    pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"deployments {names} not served after {timeout:g} s")
        time.sleep(0.2)  # polling interval of a condition wait
    return found


def _wait_record(path: Path, run_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """The timing record of a run (its process writes it at exit, just after the run's final state)."""
    deadline = time.monotonic() + timeout
    while run_id not in (recs := _timings(path)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no timing record for flow run {run_id} in {path}")
        time.sleep(0.05)  # polling interval of a condition wait
    return recs[run_id]
