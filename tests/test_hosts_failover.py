"""Beyond one box (issue #15): the system on five hosts of one machine (network namespaces, `tests.hosts_support`),
each started as README's "Running on more than one machine" says:

- `server`: PostgreSQL 15 (its own cluster), Prefect's server on it and the journal server (`tradeflow up --role
  server`);
- `a`, `b`: process workers of the one work pool (`tradeflow up --role worker`), IBKR_CLIENT_ID bases 100 apart;
- `gw`: the paper exchange on its own address, its clock running in real time from a past session's 15:54:30;
- `c`: a host that only runs `tradeflow halt`.

The host that picks up the 15:55 `ema-entry` run is killed (every process in its namespace SIGKILLed) while it holds
the run. The failover automation (deployments/failover.py) gives the run back to the pool; the other host runs it
within the order flows' 3-minute late window; exactly one entry order reaches the exchange; the journal (on the
server host) holds the run's decision and its one order; the session's 16:00 `ema-update` completes on the survivor.
Then `tradeflow halt` on host c stops an order that a process on the survivor has already decided.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from core.calendar import NY
from core.settings import PROJECT_ROOT
from deployments.processes import api_healthy, wait_for
from tests.hosts_support import PostgresCluster, TestNet, free_port_on, require_hosts

SESSION = dt.date(2025, 5, 27)  # BULL at 15:55, an entry (tests/test_ema_flows.py)
ENTRY_AS_OF = dt.datetime.combine(SESSION, dt.time(15, 55), NY)
UPDATE_AS_OF = dt.datetime.combine(SESSION, dt.time(16, 0), NY)
CLOCK_START = dt.datetime.combine(SESSION, dt.time(15, 54, 30), NY)

pytestmark = [pytest.mark.prefect_server, pytest.mark.needs_data]


def _base_env() -> dict[str, str]:
    """This process's environment without anything of the system's or Prefect's: each host sets its own."""
    drop = ("PREFECT_", "TRADEFLOW_", "IBKR_", "TRADING_MODE")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)} | {"PYTHONUNBUFFERED": "1"}


def _tradeflow(*args: str) -> list[str]:
    return [sys.executable, "-m", "deployments.cli", *args]


def _api(url: str, auth: str):
    """A Prefect client (sync) on the server host's API, from this (root) namespace."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    return temporary_settings({PREFECT_API_URL: url, PREFECT_API_AUTH_STRING: auth}), get_client


def _flow_run(url: str, auth: str, run_id):
    ctx, get_client = _api(url, auth)
    with ctx, get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def _states(url: str, auth: str, run_id) -> list[str]:
    ctx, get_client = _api(url, auth)
    with ctx, get_client(sync_client=True) as client:
        return [s.name for s in client.read_flow_run_states(run_id)]


def _holder(net: TestNet, run) -> str | None:
    """Which worker host's namespace runs the flow run's process (its infrastructure pid, 'hostname:pid')."""
    pid_text = (run.infrastructure_pid or "").rsplit(":", 1)[-1]
    if not pid_text.isdigit():
        return None
    for name in ("a", "b"):
        if int(pid_text) in net[name].pids():
            return name
    return None


@pytest.fixture
def hosts(tmp_path: Path):
    require_hosts()
    data = PROJECT_ROOT.parent / "shared" / "data" / "bars"
    if not (data / "5m").is_dir():
        pytest.skip(f"no market data at {data}")
    with TestNet.create(["server", "a", "b", "c", "gw"]) as net:
        yield net, tmp_path, data


def test_a_dead_worker_host_loses_nothing(hosts):
    net, tmp, data = hosts
    server, gw = net["server"], net["gw"]
    pg = PostgresCluster(tmp / "pg", server.address, free_port_on(server.address, server.netns), host=server).start()
    try:
        pg.create_database("prefect")
        api_port = free_port_on(server.address, server.netns)
        journal_port = free_port_on(server.address, server.netns)
        gw_port = free_port_on(gw.address, gw.netns)
        token = secrets.token_hex(16)
        shared = {**_base_env(), "TRADEFLOW_DATA_DIR": str(data),
                  "TRADEFLOW_JOURNAL_SERVER": f"{server.address}:{journal_port}", "TRADEFLOW_JOURNAL_TOKEN": token,
                  "IBKR_HOST": gw.address, "IBKR_PORT": str(gw_port), "TRADEFLOW_PAPER_PORT": str(gw_port),
                  "TRADEFLOW_STRATEGIES": "ema"}

        def state(name: str) -> dict[str, str]:
            return {"TRADEFLOW_STATE_DIR": str(tmp / name / "state")}

        # the gateway: the paper exchange on its address, its clock running from a past session's 15:54:30
        gw.popen(_tradeflow("paper-exchange", "--host", gw.address, "--port", str(gw_port), "--admin-port", "0",
                            "--start", CLOCK_START.isoformat(), "--speed", "1", "--data-dir", str(data)),
                 tmp / "gw.log", env={**shared, **state("gw")}, cwd=PROJECT_ROOT)
        # the server: Prefect on PostgreSQL, the journal server, the deployments (schedules off: runs asked below)
        api = f"http://{server.address}:{api_port}/api"
        server.popen(_tradeflow("up", "--role", "server", "--schedules", "off"), tmp / "server.log",
                     env={**shared, **state("server"), "PREFECT_SERVER_API_HOST": server.address,
                          "PREFECT_SERVER_API_PORT": str(api_port),
                          "PREFECT_API_DATABASE_CONNECTION_URL": pg.url("prefect")}, cwd=PROJECT_ROOT)
        log = tmp / "server.log"
        wait_for(lambda: "running; Prefect UI" in log.read_text() or "failed" in log.read_text()
                 or "tradeflow up:" in log.read_text(), 300, "the server role to start")
        assert "running; Prefect UI" in log.read_text(), log.read_text()[-3000:]
        auth = (tmp / "server" / "state" / "prefect" / "api-auth").read_text().strip()
        client_env = {**shared, "PREFECT_API_URL": api, "PREFECT_API_AUTH_STRING": auth}
        for i, name in enumerate(("a", "b"), start=1):
            net[name].popen(_tradeflow("up", "--role", "worker", "--name", f"host-{name}"), tmp / f"{name}.log",
                            env={**client_env, **state(name), "IBKR_CLIENT_ID": str(100 * i)}, cwd=PROJECT_ROOT)
        ctx, get_client = _api(api, auth)

        def workers_online() -> bool:
            with ctx, get_client(sync_client=True) as client:
                names = {w.name for w in client.read_workers_for_work_pool("tradeflow")
                         if str(w.status).endswith("ONLINE")}
            return {"host-a", "host-b"} <= names

        wait_for(workers_online, 240, "both workers online")

        # the 15:55 entry, asked now (the exchange's clock is at about 15:55)
        from prefect.deployments import run_deployment

        with ctx:
            entry = run_deployment("ema-entry/ema-entry", parameters={"as_of": ENTRY_AS_OF.isoformat()}, timeout=0)
        holder = wait_for(lambda: _holder(net, _flow_run(api, auth, entry.id)), 240,
                          "a worker host to run the entry")
        survivor = "b" if holder == "a" else "a"
        killed_at = time.monotonic()
        net[holder].kill_all()  # the host dies while it holds the run

        def done() -> bool:
            return _flow_run(api, auth, entry.id).state.is_final()

        wait_for(done, 300, "the entry to end on the surviving host")
        final = _flow_run(api, auth, entry.id)
        assert final.state.is_completed(), (final.state, final.state.message)
        assert "Failover" in _states(api, auth, entry.id)
        assert _holder(net, final) in (survivor, None)  # its process has ended on the survivor
        print(f"failover: the entry completed {time.monotonic() - killed_at:.0f} s after host {holder} died")

        # the session's close on the survivor
        with ctx:
            update = run_deployment("ema-update/ema-update", parameters={"as_of": UPDATE_AS_OF.isoformat()},
                                    timeout=0)
        wait_for(lambda: _flow_run(api, auth, update.id).state.is_final(), 600, "the 16:00 update")
        assert _flow_run(api, auth, update.id).state.is_completed()

        # exactly one entry order at the exchange, and the journal (the server's) holds it and the decision
        check = net["c"].run([sys.executable, "-c", textwrap.dedent(f"""
            import json
            from core.ib_broker import IBBroker
            from core.journal import Journal
            from core.settings import get_settings
            s = get_settings()
            with IBBroker(client_id=390, settings=s) as b:
                orders = [o.order_ref for o in b.completed_orders() + b.open_orders()]
                execs = [e.order_ref for e in b.executions()]
            j = Journal(s.journal_path)
            rows = j.query("SELECT order_ref, status FROM orders WHERE strategy = 'ema'").to_dict("records")
            decisions = j.query("SELECT count(*) AS n FROM decisions WHERE strategy = 'ema'")["n"][0]
            print(json.dumps({{"orders": orders, "execs": execs, "journal": rows, "decisions": int(decisions)}}))
        """)], env={**client_env, **state("c"), "IBKR_CLIENT_ID": "300"}, cwd=PROJECT_ROOT)
        assert check.returncode == 0, check.stderr[-3000:]
        seen = json.loads(check.stdout.strip().splitlines()[-1])
        entries = [r for r in seen["orders"] if r and r.startswith("ema-")]
        assert len(entries) == 1, seen
        assert len({r for r in seen["execs"] if r and r.startswith("ema-")}) == 1, seen
        assert [r["order_ref"] for r in seen["journal"]] == entries and seen["decisions"] >= 1, seen

        # `tradeflow halt` on host c stops an order already decided on the survivor
        ready, go = tmp / "ready", tmp / "go"
        probe = net[survivor].popen([sys.executable, "-m", "tests.hosts_probe", str(ready), str(go)],
                                    tmp / "probe.log", env={**client_env, **state(survivor), "IBKR_CLIENT_ID": "350"},
                                    cwd=PROJECT_ROOT)
        wait_for(ready.exists, 120, "the probe on the survivor to decide its order")
        halted = net["c"].run(_tradeflow("halt", "--reason", "test: halt from another host", "--who", "tester"),
                              env={**client_env, **state("c")}, cwd=PROJECT_ROOT)
        go.touch()
        assert halted.returncode == 0, halted.stdout + halted.stderr
        assert probe.wait(120) == 0, (tmp / "probe.log").read_text()[-3000:]
        assert "NOT SENT: trading halted by tester" in (tmp / "probe.log").read_text()
    finally:
        pg.stop()
