"""`tradeflow up --role ...`: the parts of the system on several hosts ("Beyond one box", issue #15; README,
"Running on more than one machine").

| role | starts | needs |
|---|---|---|
| all (default) | everything on this machine, as `deployments.up` says | nothing |
| server | Prefect's server on PostgreSQL; the journal's writer for every host; the deployments, alerts and the failover automation | PREFECT_API_DATABASE_CONNECTION_URL (postgresql+asyncpg://…), PREFECT_SERVER_API_HOST/PORT (this host's address), TRADEFLOW_JOURNAL_SERVER (this host's address:port), TRADEFLOW_JOURNAL_TOKEN |
| worker | a process worker of the `tradeflow` work pool, named for this host, its runs sending heartbeats | PREFECT_API_URL and PREFECT_API_AUTH_STRING (the server's), TRADEFLOW_JOURNAL_SERVER, TRADEFLOW_JOURNAL_TOKEN, an IBKR_CLIENT_ID base of its own |
| gateway | the paper exchange on IBKR_HOST:IBKR_PORT (this host's address), its clock running in real time | the data directory |

Every host keeps its own state directory (logs; on the server host also the journal, the HALT file, the Prefect
auth string). What the hosts share goes over the network: runs and schedules through Prefect's API, the journal,
the kill switch and position breaks through the journal server (`core.journal.remote`). IB client ids: each
deployment connects with IBKR_CLIENT_ID + its offset (`core.registry`, offsets below 100), so hosts whose
IBKR_CLIENT_ID bases are 100 apart never share one (IB error 326).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from typing import TYPE_CHECKING

from core.settings import PROJECT_ROOT

if TYPE_CHECKING:
    from deployments.up import Up

ROLES = ("all", "server", "worker", "gateway")


def _require(name: str, why: str) -> str:
    from deployments.up import UpError

    value = os.environ.get(name, "").strip()
    if not value:
        raise UpError(f"--role needs {name}: {why}")
    return value


def _journal_server():
    from core.journal.remote import configured
    from deployments.up import UpError

    try:
        server = configured()
    except ValueError as exc:
        raise UpError(str(exc)) from None
    if server is None or not server.token:
        raise UpError("TRADEFLOW_JOURNAL_SERVER (the server host's address:port for the journal) and "
                      "TRADEFLOW_JOURNAL_TOKEN (a secret, the same on every host) must both be set")
    return server


def start_server(up: "Up", schedules: bool) -> None:
    """The server role (module docstring)."""
    from prefect.settings import get_current_settings

    from deployments.prefect_auth import ensure_auth
    from deployments.processes import Child, LocalServer, port_open, wait_for
    from deployments.up import UpError, _alive_or_raise

    db = _require("PREFECT_API_DATABASE_CONNECTION_URL", "the server role runs Prefect on PostgreSQL "
                  "(postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DB): its SQLite backend fails with 'database is "
                  "locked' under several workers' load")
    if not db.startswith("postgresql"):
        raise UpError(f"PREFECT_API_DATABASE_CONNECTION_URL must be a PostgreSQL URL (postgresql+asyncpg://…), got "
                      f"{db.split(':', 1)[0]}:…")
    journal = _journal_server()
    prefect = get_current_settings()
    host, port = prefect.server.api.host, prefect.server.api.port
    home = up.settings.prefect_home
    up.say(f"starting the Prefect server on {host}:{port} (PostgreSQL) …")
    server = LocalServer(home, port, up.logs / "prefect-server.log", host=host, auth_string=ensure_auth(home),
                         extra_env={"PREFECT_API_DATABASE_CONNECTION_URL": db})
    up.server = server
    server.start()
    up.children.append(server.child)
    up.api_url, up.ui_url = server.api_url, server.ui_url
    os.environ["PREFECT_API_URL"] = server.api_url  # this process's own client (the deploy step)
    env = {k: v for k, v in up.child_env().items() if k != "TRADEFLOW_JOURNAL_SERVER"}
    writer = Child("journal server", [sys.executable, "-m", "core.journal.server", str(up.settings.journal_path),
                                      "--bind", journal.host, "--port", str(journal.port), "--idle", "0"],
                   up.logs / "journal-server.log", env=env, cwd=PROJECT_ROOT).start()
    up.children.append(writer)
    wait_for(lambda: _alive_or_raise(writer) and port_open(journal.host, journal.port), 60,
             f"the journal server on {journal}")
    up.say(f"journal server: {journal} (file {up.settings.journal_path}; every host's journal, kill switch and "
           "position breaks)")
    from deployments.cmd_deploy import deploy_all

    deploy_all(up.settings, active=schedules, api=up.api_url, out=up.out)


def start_worker(up: "Up", name: str | None) -> None:
    """The worker role (module docstring)."""
    from prefect.settings import get_current_settings

    from deployments.deploy import WORK_POOL
    from deployments.processes import Child, api_healthy, worker_argv, worker_env
    from deployments.up import UpError

    api = str(get_current_settings().api.url or "").rstrip("/")
    if not api:
        raise UpError("--role worker needs PREFECT_API_URL (the server host's http://ADDRESS:PORT/api) and "
                      "PREFECT_API_AUTH_STRING (the content of the server host's state/prefect/api-auth)")
    if not api_healthy(api):
        raise UpError(f"PREFECT_API_URL={api} does not answer: start `tradeflow up --role server` there first")
    journal = _journal_server()
    up.api_url, up.ui_url = api, str(get_current_settings().ui_url or api.removesuffix("/api"))
    worker_name = name or f"tradeflow-{socket.gethostname()}"
    child = Child("worker", worker_argv(WORK_POOL, worker_name), up.logs / "worker.log",
                  env={**up.child_env(), **worker_env(), "TRADEFLOW_WORKER_NAME": worker_name},
                  cwd=PROJECT_ROOT).start()
    up.children.append(child)
    up.say(f"worker {worker_name}: process work pool '{WORK_POOL}' on {api}, journal {journal} "
           f"(log {child.log_path})")


def start_gateway(up: "Up") -> None:
    """The gateway role: the paper exchange on IBKR_HOST:IBKR_PORT, its clock real time (module docstring)."""
    from deployments.paper import paper_exchange_running
    from deployments.processes import Child, wait_for
    from deployments.up import UpError, _alive_or_raise

    s = up.settings
    if not s.data_dir.is_dir():
        raise UpError(f"the paper exchange has no data: {s.data_dir} not found (TRADEFLOW_DATA_DIR)")
    argv = [sys.executable, "-m", "deployments.cli", "paper-exchange", "--host", s.ibkr_host, "--port",
            str(s.ibkr_port), "--admin-port", str(s.paper_admin_port), "--data-dir", str(s.data_dir), "--speed", "1"]
    child = Child("paper exchange", argv, up.logs / "paper-exchange.log", env=up.child_env(), cwd=PROJECT_ROOT).start()
    up.children.append(child)
    t0 = time.monotonic()
    wait_for(lambda: _alive_or_raise(child) and paper_exchange_running(s), 60,
             f"the paper exchange on {s.ibkr_host}:{s.ibkr_port}")
    up.paper = True
    up.say(f"gateway: paper exchange on {s.ibkr_host}:{s.ibkr_port} in real time (ready in "
           f"{time.monotonic() - t0:.1f} s; log {child.log_path})")
