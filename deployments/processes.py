"""Child processes of `tradeflow up` (and of the tests that start real servers): started in a process group of
their own, with a log file, stopped cleanly (a signal to the whole group, a wait, then SIGKILL for what is left),
and a local Prefect server with SQLite in a given home.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx

HOLD_AHEAD = timedelta(days=61)
"""How far ahead the local server keeps scheduled runs (at least): the UI shows the next two months of runs."""
MAX_RUNS_PER_SCHEDULE = 1000
"""Runs the scheduler creates per schedule at most (Prefect evaluates at most 1,000 dates anyway)."""


def scheduler_env(loop_seconds: float | None = None) -> dict[str, str]:
    """Prefect server settings that make its scheduler hold `HOLD_AHEAD` of runs of every schedule (Prefect's
    defaults stop at 3 runs or one hour ahead)."""
    env = {
        "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_SCHEDULED_TIME": f"P{HOLD_AHEAD.days}D",
        "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": str(MAX_RUNS_PER_SCHEDULE),
        "PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS": "3",
    }
    if loop_seconds is not None:
        env["PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS"] = str(loop_seconds)
    return env


LATE_RUNS_LOOP_SECONDS = 1.0
"""How often the server's late-runs service looks for runs to mark Late (Prefect's default: 5 s)."""
PROACTIVE_GRANULARITY_SECONDS = 1.0
"""How often the server evaluates the Proactive automations that are due (Prefect's default: 5 s)."""


def alert_services_env() -> dict[str, str]:
    """Prefect server settings that keep the late-run and no-worker notices (`deployments.alerts`) close to their
    times: the late-runs service every `LATE_RUNS_LOOP_SECONDS`, the Proactive automations every
    `PROACTIVE_GRANULARITY_SECONDS`.

    Why the late-runs loop matters: on SQLite the service's marks of a burst of late runs (the runs a stopped
    worker left, or several deployments due at once) conflict with each other ("database is locked", Prefect
    3.8 marks each in a task of its own, ten at a time) and a failed mark waits for the next loop. Measured on a
    fresh server with 12 past mtf-signal runs and one ema-entry run due 2 s later: every 5 s, the 12 were marked
    over 50 s and the ema-entry 21 s after its time (15 s being Prefect's threshold); every 1 s, over 14.5 s and
    15.6 s. Inside the test suite's load the 5 s loop made the ema-entry notice later than its N + 60 s."""
    return {"PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS": f"{LATE_RUNS_LOOP_SECONDS:g}",
            "PREFECT_SERVER_EVENTS_PROACTIVE_GRANULARITY": f"PT{PROACTIVE_GRANULARITY_SECONDS:g}S"}


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (bind to 0, read it, release it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.25) -> object:
    """Poll `predicate` until it returns a true value (returned) or `timeout` seconds pass.

    Raises:
        TimeoutError: naming `what`.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)  # the polling interval of a condition wait


@dataclass
class Child:
    """A child process in its own process group, its output in `log_path`.

    Attributes:
        name: shown in messages ("Prefect server", "worker", ...).
        argv, env, cwd: how it is started.
        stop_signal: the signal that asks it to stop cleanly (SIGINT by default, as Ctrl+C would).
    """

    name: str
    argv: Sequence[str]
    log_path: Path
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    stop_signal: int = signal.SIGINT
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> "Child":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(list(self.argv), env=dict(self.env) if self.env is not None else None,
                                         cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def ask_to_stop(self) -> None:
        """Send the whole process group `stop_signal` once, without waiting (see `stop_all`)."""
        if self.alive():
            _killpg(self.proc.pid, self.stop_signal)

    def stop(self, timeout: float = 20.0, *, asked: bool = False) -> int | None:
        """Ask the whole process group to stop (`stop_signal`; not again when `asked`), wait up to `timeout` s,
        then SIGKILL the group. Returns the exit code (None when never started)."""
        if self.proc is None:
            return None
        pgid = self.proc.pid
        if self.proc.poll() is None:
            if not asked:
                _killpg(pgid, self.stop_signal)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _killpg(pgid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        # grandchildren that outlived their parent (same group): a short grace, then SIGKILL
        try:
            wait_for(lambda: not _group_alive(pgid), 5.0, f"{self.name}'s process group to exit", 0.1)
        except TimeoutError:
            _killpg(pgid, signal.SIGKILL)
        return self.proc.returncode


def stop_all(children: Sequence[Child], timeout: float = 20.0) -> None:
    """Stop `children` together: each is asked once, in the order given, then all are waited for within one
    `timeout` (s), a child still running after it SIGKILLed with its group. Stopping them one after another
    could take `timeout` s each (a Prefect worker and server under load each use most of it)."""
    for child in children:
        child.ask_to_stop()
    deadline = time.monotonic() + timeout
    for child in children:
        child.stop(max(0.1, deadline - time.monotonic()), asked=True)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a group of another user
        return True


@dataclass
class LocalServer:
    """Prefect's server on 127.0.0.1 (`deployments.prefect_server`: `prefect server start`'s app behind a Host
    header check) with SQLite under `home` (PREFECT_HOME), CORS allowing only its own UI, Basic auth when
    `auth_string` is given, the scheduler of `scheduler_env` and the loops of `alert_services_env`.

    Attributes:
        api_url: http://127.0.0.1:PORT/api once started; ui_url: http://127.0.0.1:PORT.
    """

    home: Path
    port: int
    log_path: Path
    host: str = "127.0.0.1"
    """The address it listens on: loopback, or the server host's own (`tradeflow up --role server`)."""
    ui: bool = True
    extra_env: Mapping[str, str] = field(default_factory=dict)
    auth_string: str | None = None
    """The Basic auth string ('user:password') every API request must carry (`deployments.prefect_auth`); None:
    no authentication (the tests' own server)."""
    child: Child | None = None

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.ui_url}/api"

    @property
    def auth_path(self) -> Path:
        """Where `tradeflow up` keeps the server's auth string (`deployments.prefect_auth`)."""
        from deployments.prefect_auth import auth_path

        return auth_path(self.home)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update({
            "PREFECT_HOME": str(self.home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_ENABLED": "true" if self.ui else "false",
            "PREFECT_UI_URL": self.ui_url,
            "PREFECT_API_URL": self.api_url,
            # only the server's own UI may call it from a browser
            "PREFECT_SERVER_CORS_ALLOWED_ORIGINS": f"{self.ui_url},http://localhost:{self.port}",
            **scheduler_env(),
            **alert_services_env(),
            **self.extra_env,
        })
        if self.auth_string is not None:
            env["PREFECT_SERVER_API_AUTH_STRING"] = self.auth_string
            env["PREFECT_API_AUTH_STRING"] = self.auth_string
        return env

    def start(self, timeout: float = 120.0) -> "LocalServer":
        """Start it and wait until its health endpoint answers.

        Raises:
            RuntimeError: it exited (with the end of its log), or did not answer within `timeout` s.
        """
        self.home.mkdir(parents=True, exist_ok=True)
        self.child = Child("Prefect server", [sys.executable, "-m", "deployments.prefect_server", "--host",
                                              self.host, "--port", str(self.port)],
                           self.log_path, env=self.env(), stop_signal=signal.SIGTERM).start()

        def healthy() -> bool:
            if not self.child.alive():
                raise RuntimeError(f"the Prefect server exited with {self.child.proc.returncode}; its log "
                                   f"({self.log_path}) ends:\n{self.child.log_tail()}")
            return api_healthy(self.api_url)

        try:
            wait_for(healthy, timeout, f"the Prefect server at {self.api_url}")
        except TimeoutError as exc:
            self.stop()
            raise RuntimeError(f"{exc}; its log ({self.log_path}) ends:\n{self.child.log_tail()}") from None
        return self

    def stop(self) -> None:
        if self.child:
            self.child.stop(timeout=30)


def api_healthy(api_url: str, timeout: float = 2.0) -> bool:
    """True when a Prefect API answers its health endpoint at `api_url` (…/api)."""
    try:
        return httpx.get(f"{api_url.rstrip('/')}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


WORKER_QUERY_SECONDS = 2.0
"""How often `tradeflow up`'s worker asks the server for runs (PREFECT_WORKER_QUERY_SECONDS; Prefect's default 10)."""
WORKER_PREFETCH_SECONDS = 20.0
"""How far ahead it takes a scheduled run (PREFECT_WORKER_PREFETCH_SECONDS; Prefect's default 10)."""


def worker_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The worker settings of `tradeflow up` (`WORKER_QUERY_SECONDS`, `WORKER_PREFETCH_SECONDS`), each unless
    `environ` (default: this process's environment) already sets it: merge the result over the worker's env.

    Why (`bench/schedule_to_action`, its process-worker arms): a process worker takes a run at its first poll after
    `scheduled - prefetch` and starts the run's process at once; the process then needs time (interpreter, Prefect,
    the flow's imports) before it asks to go Running, and Prefect's server holds it until the scheduled time
    (orchestration rule WaitForScheduledTime, rounded to whole seconds: the flow's code may begin up to 0.5 s
    early). The run starts on time only when `prefetch - query` exceeds that start-up. Prefect's defaults (10 s / 10
    s) leave 0 to 10 s: measured with the machine's load average at 7 on 2 cores, the processes started 4 s before
    the time (p50; the latest 1 s after it) and the orders reached the exchange 28 s (p50) / 33 s (p95) after it;
    with 20 s / 2 s they started 18 s before (the latest 14 s before) and the orders came 5 s / 18 s after, the
    served path's figures (6 s / 19 s) under the same load (a run's start-up then took up to 30 s). Prefetch is
    bounded above by the deployments' concurrency limit (1, CANCEL_NEW, `deployments.deploy`): a run taken while the
    previous run of its deployment still runs is cancelled, so prefetch + query must stay below the shortest cadence
    (mtf-signal, 300 s) minus that flow's timeout (240 s, `tasks.run_policy`).

    Also the flow runs' heartbeat (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, `deployments.failover.HEARTBEAT_SECONDS`), by
    which a run whose host died is given to another worker."""
    from deployments.failover import HEARTBEAT_SECONDS

    environ = os.environ if environ is None else environ
    wanted = {"PREFECT_WORKER_QUERY_SECONDS": f"{WORKER_QUERY_SECONDS:g}",
              "PREFECT_WORKER_PREFETCH_SECONDS": f"{WORKER_PREFETCH_SECONDS:g}",
              "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS)}
    return {k: environ.get(k, v) for k, v in wanted.items()}


def worker_argv(pool: str, name: str | None = None) -> list[str]:
    """The command of a Prefect process worker polling the work pool `pool` (its timing settings: `worker_env`),
    named `name` (the worker on the UI's work pool page, so which host polls)."""
    return [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process",
            *(["--name", name] if name else [])]


def _bind_host(host: str, what: str) -> str:
    if not host or host in ("0.0.0.0", "::", "*"):
        raise ValueError(f"{what} needs the address of one interface to bind (got {host!r}): never every interface")
    return host


def dask_scheduler_argv(host: str, port: int) -> list[str]:
    """The command of the Dask scheduler `retrain` fans out to (`TRADEFLOW_DASK_SCHEDULER=tcp://HOST:PORT`),
    listening on `host`:`port`, without its web dashboard; its HTTP routes (health, metrics) on `host` as well.

    Raises:
        ValueError: `host` is empty or a wildcard (0.0.0.0, ::), or `port` is not 1..65535.
    """
    if not 0 < int(port) <= 65535:
        raise ValueError(f"Dask scheduler port {port} is not in 1..65535")
    host = _bind_host(host, "the Dask scheduler")
    return [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", host, "--port", str(int(port)),
            "--no-dashboard", "--dashboard-address", _http_address(host)]


def _http_address(host: str) -> str:
    """The address of a Dask process's HTTP server (health and metrics routes, which it serves even without the
    dashboard, on 0.0.0.0 unless told): `host` on an ephemeral port."""
    return f"[{host}]:0" if ":" in host else f"{host}:0"


def dask_worker_argv(scheduler_address: str, nthreads: int = 1, host: str = "127.0.0.1",
                     name: str | None = None) -> list[str]:
    """The command of one Dask worker process (under its nanny, which restarts it when it dies) on `host` (its
    own, its nanny's and its HTTP routes' listening address, ephemeral ports), joining the scheduler at
    `scheduler_address` (tcp://HOST:PORT), running `nthreads` tasks at once, without a dashboard.

    `nthreads` 1 is the right number for `retrain`: one challenger trains at a time in a worker process (Keras'
    seeds are process-wide, and TensorFlow spreads one training over the host's cores itself); a host with more
    cores runs more workers.

    Raises:
        ValueError: `host` is empty or a wildcard, or `nthreads` < 1.
    """
    if nthreads < 1:
        raise ValueError(f"a Dask worker needs at least one thread, got {nthreads}")
    host = _bind_host(host, "a Dask worker")
    argv = [sys.executable, "-m", "distributed.cli.dask_worker", scheduler_address, "--host", host,
            "--nthreads", str(nthreads), "--nworkers", "1", "--no-dashboard",
            "--dashboard-address", _http_address(host)]
    return argv + (["--name", name] if name else [])


def wait_for_dask_workers(scheduler_address: str, n: int, timeout: float = 60.0) -> list[str]:
    """Wait until the Dask scheduler at `scheduler_address` answers and has at least `n` workers; returns their
    addresses.

    Raises:
        TimeoutError: the scheduler did not answer, or fewer than `n` workers joined, within `timeout` s.
    """
    import distributed

    deadline = time.monotonic() + timeout
    try:
        with distributed.Client(scheduler_address, timeout=timeout, set_as_default=False) as client:
            client.wait_for_workers(n, timeout=max(0.1, deadline - time.monotonic()))
            return sorted(client.scheduler_info(n_workers=-1)["workers"])
    except (OSError, distributed.TimeoutError) as exc:
        raise TimeoutError(f"timed out after {timeout:g} s waiting for {n} Dask worker(s) at {scheduler_address}: "
                           f"{exc}") from exc


def dask_tasks_executed(scheduler_address: str, timeout: float = 60.0) -> dict[str, int]:
    """Tasks each worker of the Dask cluster at `scheduler_address` has executed since it started, by worker
    name (its `--name`, else its address): where the fan-out's work went.

    Raises:
        OSError: the scheduler cannot be reached within `timeout` s.
    """
    import distributed

    with distributed.Client(scheduler_address, timeout=timeout, set_as_default=False) as client:
        return dict(client.run(lambda dask_worker: (str(dask_worker.name), dask_worker.state.executed_count)).values())
