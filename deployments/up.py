"""`tradeflow up`: start what is missing and run the system until Ctrl+C.

In order:
1. the Prefect API: PREFECT_API_URL when set (it must answer); else a Prefect server already answering on
   127.0.0.1:PREFECT_SERVER_API_PORT (4200); else Prefect's server there (`deployments.prefect_server`), SQLite
   in settings.prefect_home (state/prefect), holding two months of scheduled runs
   (`deployments.processes.scheduler_env`), requiring the Basic auth string kept in state/prefect/api-auth (0600,
   `deployments.prefect_auth`; handed to the worker, the replay and this process's client), allowing CORS only
   from its own UI, and answering only Host headers of the loopback names;
2. the broker: when no TWS is configured (`deployments.paper`), the paper exchange on the data directory
   (`tradeflow paper-exchange` on IBKR_PORT / TRADEFLOW_PAPER_ADMIN_PORT, account state in the state directory);
3. the deployments and the alert automations (`tradeflow deploy`; schedules off with the paper exchange);
4. a process worker for the `tradeflow` work pool, which runs every deployment run in the project folder (polling
   every 2 s and taking a run 20 s before its time, so that it starts on time: `deployments.processes.worker_env`);
5. with the paper exchange, a replay of the most recent session(s) of the data (`tradeflow replay`), so that
   every flow runs on real data at once; skipped when the journal already holds a replay of them.

It prints where the UI is, then watches: every evening at 20:00 New York it runs the deploy step again (the
schedules' 12-month window moves with the month; nothing changes otherwise), and when a child it started dies it
says which, with the end of its log, stops the rest and exits 1. SIGINT (Ctrl+C) or SIGTERM stops what it
started (replay, worker, paper exchange, server; each a process group of its own, asked to stop, then killed
after a grace period) and exits 0. Logs: state/logs/.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.calendar import NY
from core.settings import PROJECT_ROOT, Settings
from deployments.processes import (Child, LocalServer, api_healthy, port_open, stop_all, wait_for, worker_argv,
                                   worker_env)

REDEPLOY_AT = dt.time(20, 0)
"""New York time of the evening redeploy (no event between 18:00 and the next open)."""


class UpError(RuntimeError):
    """`tradeflow up` cannot start; the message says what to fix."""


@dataclass
class Up:
    """The running system: the children `up` started, the API and UI addresses, whether the broker is the
    paper exchange."""

    settings: Settings
    out: Any = sys.stdout
    children: list[Child] = field(default_factory=list)
    server: LocalServer | None = None
    api_url: str = ""
    ui_url: str = ""
    paper: bool = False
    stop_requested: threading.Event = field(default_factory=threading.Event)

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    @property
    def logs(self) -> Path:
        return self.settings.state_dir / "logs"

    def child_env(self) -> dict[str, str]:
        """The environment of the worker and the replay: this one, with the API and the state directory."""
        return {**os.environ, "PREFECT_API_URL": self.api_url,
                "TRADEFLOW_STATE_DIR": str(self.settings.state_dir),
                "TRADEFLOW_DATA_DIR": str(self.settings.data_dir)}

    # --- the parts ---------------------------------------------------------------------------------------------

    def start_api(self) -> None:
        from prefect.settings import get_current_settings

        prefect = get_current_settings()
        if prefect.api.url:
            self.api_url = str(prefect.api.url).rstrip("/")
            if not api_healthy(self.api_url):
                raise UpError(f"PREFECT_API_URL={self.api_url} does not answer; start that server or unset "
                              "PREFECT_API_URL to let `tradeflow up` start a local one")
            self.ui_url = str(prefect.ui_url or self.api_url.removesuffix("/api"))
            self.say(f"Prefect API: {self.api_url} (PREFECT_API_URL)")
            return
        port = prefect.server.api.port
        local = f"http://127.0.0.1:{port}/api"
        if api_healthy(local):
            self.api_url, self.ui_url = local, local.removesuffix("/api")
            self.say(f"Prefect API: {local} (a server already running there; left as it is)")
            return
        if port_open("127.0.0.1", port):
            raise UpError(f"127.0.0.1:{port} is taken by something that is not a Prefect server; set "
                          "PREFECT_SERVER_API_PORT to a free port")
        home = self.settings.prefect_home
        self.say(f"starting the Prefect server on 127.0.0.1:{port} (SQLite in {home}) …")
        t0 = time.monotonic()
        from deployments.prefect_auth import ensure_auth

        self.server = LocalServer(home, port, self.logs / "prefect-server.log", auth_string=ensure_auth(home))
        self.server.start()  # stops what it started when it fails
        self.children.append(self.server.child)
        self.api_url, self.ui_url = self.server.api_url, self.server.ui_url
        self.say(f"Prefect server ready in {time.monotonic() - t0:.1f} s")

    def start_broker(self, replay_from: dt.datetime | None) -> None:
        from deployments.paper import paper_exchange_configured, paper_exchange_running

        s = self.settings
        self.paper = paper_exchange_configured(s)
        if not self.paper:
            self.say(f"broker: TWS / IB Gateway at {s.ibkr_host}:{s.ibkr_port} (TRADING_MODE={s.trading_mode})")
            return
        if paper_exchange_running(s):
            self.say(f"broker: the paper exchange already running on 127.0.0.1:{s.ibkr_port}")
            return
        if not s.data_dir.is_dir():
            raise UpError(f"no TWS is configured and the paper exchange has no data: {s.data_dir} not found "
                          "(TRADEFLOW_DATA_DIR)")
        argv = [sys.executable, "-m", "deployments.cli", "paper-exchange", "--port", str(s.ibkr_port),
                "--admin-port", str(s.paper_admin_port), "--data-dir", str(s.data_dir)]
        fresh = not s.paper_exchange_state_file.exists()
        if fresh and replay_from is not None:
            argv += ["--start", replay_from.isoformat()]
        child = Child("paper exchange", argv, self.logs / "paper-exchange.log", env=self.child_env(),
                      cwd=PROJECT_ROOT).start()
        self.children.append(child)
        wait_for(lambda: _alive_or_raise(child) and paper_exchange_running(s), 60,
                 f"the paper exchange on 127.0.0.1:{s.ibkr_port}")
        self.say(f"broker: paper exchange on 127.0.0.1:{s.ibkr_port} (admin {s.paper_admin_port}), bars from "
                 f"{s.data_dir}, account state {s.paper_exchange_state_file}")

    def start_paper_services(self) -> None:
        """With the paper exchange: the processes the running strategies ask for (`Strategy.paper_services`, e.g.
        the signals strategy's local signal source)."""
        from core.registry import default_registry

        if not self.paper:
            return
        registry = default_registry()
        for name in registry.enabled(self.settings.strategies):
            for label, args in registry.strategy(name).paper_services:
                child = Child(label, [sys.executable, *args], self.logs / f"{label.replace(' ', '-')}.log",
                              env=self.child_env(), cwd=PROJECT_ROOT).start()
                self.children.append(child)
                self.say(f"{label} for {name} (log {child.log_path})")

    def deploy(self) -> None:
        from deployments.cmd_deploy import deploy_all

        _, _ = deploy_all(self.settings, active=not self.paper, api=self.api_url, out=self.out)
        if self.paper:
            self.say("  schedules are off: the paper exchange replays past sessions, so runs fired by today's "
                     "clock would trade on another day's prices (with TWS they fire on the calendar)")

    def start_worker(self) -> None:
        from deployments.deploy import WORK_POOL

        env = {**self.child_env(), **worker_env()}  # polls every 2 s, takes runs 20 s ahead: on time
        child = Child("worker", worker_argv(WORK_POOL), self.logs / "worker.log", env=env, cwd=PROJECT_ROOT).start()
        self.children.append(child)
        self.say(f"worker: process work pool '{WORK_POOL}', polling every {env['PREFECT_WORKER_QUERY_SECONDS']} s, "
                 f"taking runs {env['PREFECT_WORKER_PREFETCH_SECONDS']} s ahead (log {child.log_path})")

    def start_replay(self, argv_tail: list[str]) -> Child:
        child = Child("replay", [sys.executable, "-m", "deployments.cli", "replay", *argv_tail],
                      self.logs / "replay.log", env=self.child_env(), cwd=PROJECT_ROOT).start()
        self.children.append(child)
        return child

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every child this process started, the last started first (a second Ctrl+C meanwhile is
        ignored: the children are being stopped)."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        running = [child for child in reversed(self.children) if child.alive()]
        if running:
            self.say(f"stopping {', '.join(child.name for child in running)} …")
        stop_all(list(reversed(self.children)))
        self.children.clear()

    def watch(self, replay: Child | None) -> int:
        """Until a child dies (returns 1; Ctrl+C / SIGTERM raise KeyboardInterrupt); redeploys every evening."""
        last_deploy_day = dt.datetime.now(NY).date()
        while not self.stop_requested.wait(1.0):
            if replay is not None and not replay.alive():
                code = replay.proc.returncode
                last = (replay.log_tail(4000).strip().splitlines() or [""])[-1]
                self.say(f"replay finished: {last}\n  its runs are in the UI ({self.ui_url}/runs), its log is "
                         f"{replay.log_path}" + ("" if code == 0 else f" (exit {code})"))
                self.children.remove(replay)
                replay = None
            for child in self.children:
                if child is not replay and not child.alive():
                    self.say(f"{child.name} stopped unexpectedly (exit {child.proc.returncode}); the end of its "
                             f"log {child.log_path}:\n{child.log_tail()}")
                    return 1
            now = dt.datetime.now(NY)
            if now.date() != last_deploy_day and now.time() >= REDEPLOY_AT:
                last_deploy_day = now.date()
                try:
                    self.deploy()
                except Exception as exc:  # noqa: BLE001 - keep running; the schedules are still valid for months
                    self.say(f"WARNING: the evening redeploy failed: {exc}")
        return 0


def _alive_or_raise(child: Child) -> bool:
    if not child.alive():
        raise UpError(f"{child.name} exited with {child.proc.returncode}; the end of its log {child.log_path}:\n"
                      f"{child.log_tail()}")
    return True
