"""Beyond one box (issue #15): the system on five hosts of one machine (network namespaces, `tests.hosts_support`),
each started as README's "Running on more than one machine" says:

- `server`: PostgreSQL 15 (its own cluster), Prefect's server on it and the journal server (`tradeflow up --role
  server`);
- `a`, `b`: process workers of the one work pool (`tradeflow up --role worker`), IBKR_CLIENT_ID bases 100 apart;
- `gw`: the paper exchange on its own address, its clock running in real time from a past session's 15:51:30;
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
from pathlib import Path

import pytest

from core.calendar import NY
from core.settings import PROJECT_ROOT
from deployments.processes import api_healthy, wait_for
from tests.hosts_support import PostgresCluster, TestNet, free_port_on, require_hosts

SESSION = dt.date(2025, 5, 27)  # BULL at 15:55, an entry (tests/test_ema_flows.py)
ENTRY_AS_OF = dt.datetime.combine(SESSION, dt.time(15, 55), NY)
UPDATE_AS_OF = dt.datetime.combine(SESSION, dt.time(16, 0), NY)
CLOCK_START = dt.datetime.combine(SESSION, dt.time(15, 51, 30), NY)
"""Before the entry's 15:55: the paper exchange fills at bar granularity (a market order placed after 15:55:00 waits
for a 16:00 bar that never comes), so the failover (up to about 2 minutes here under load) must end before the
clock reaches 15:55; the entry then waits for its fill at the 15:55 bar's open."""

pytestmark = [pytest.mark.prefect_server, pytest.mark.needs_data, pytest.mark.timeout(1800)]


def _base_env() -> dict[str, str]:
    """This process's environment without anything of the system's or Prefect's: each host sets its own."""
    drop = ("PREFECT_", "TRADEFLOW_", "IBKR_", "TRADING_MODE")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)} | {"PYTHONUNBUFFERED": "1"}


def _tradeflow(*args: str) -> list[str]:
    return [sys.executable, "-m", "deployments.cli", *args]


class PrefectAt:
    """Prefect's API on the server host, from this (root) namespace: what the test reads and asks there."""

    def __init__(self, url: str, auth: str):
        self.url, self.auth = url, auth

    def _settings(self):
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

        return temporary_settings({PREFECT_API_URL: self.url, PREFECT_API_AUTH_STRING: self.auth})

    def _client(self):
        from prefect.client.orchestration import get_client

        return get_client(sync_client=True)

    def flow_run(self, run_id):
        with self._settings(), self._client() as client:
            return client.read_flow_run(run_id)

    def states(self, run_id) -> list:
        with self._settings(), self._client() as client:
            return sorted(client.read_flow_run_states(run_id), key=lambda st: st.timestamp)

    def state_names(self, run_id) -> list[str]:
        return [st.name for st in self.states(run_id)]

    def online_workers(self) -> set[str]:
        with self._settings(), self._client() as client:
            return {w.name for w in client.read_workers_for_work_pool("tradeflow")
                    if str(w.status).upper().endswith("ONLINE")}

    def ask(self, deployment: str, as_of: dt.datetime):
        """An ad hoc run of `deployment` now, with `as_of` (what `prefect deployment run -p as_of=...` does)."""
        from prefect.deployments import run_deployment

        with self._settings():
            return run_deployment(deployment, parameters={"as_of": as_of.isoformat()}, timeout=0)


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
                  "TRADEFLOW_EMA_FILL_TIMEOUT_SECONDS": "600",
                  "TRADEFLOW_PAPER_ADMIN_PORT": str(free_port_on("127.0.0.1", gw.netns))}

        def state(name: str) -> dict[str, str]:
            return {"TRADEFLOW_STATE_DIR": str(tmp / name / "state")}

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
        prefect = PrefectAt(api, auth)
        wait_for(lambda: {"host-a", "host-b"} <= prefect.online_workers(), 240, "both workers online")

        # the gateway: the paper exchange on its address, its clock running from a past session's 15:51:30
        gw.popen(_tradeflow("paper-exchange", "--host", gw.address, "--port", str(gw_port),
                            "--start", CLOCK_START.isoformat(), "--speed", "1", "--data-dir", str(data)),
                 tmp / "gw.log", env={**shared, **state("gw")}, cwd=PROJECT_ROOT)
        wait_for(lambda: "paper exchange on" in (tmp / "gw.log").read_text(), 120, "the paper exchange")

        # the 15:55 entry, asked now
        entry = prefect.ask("ema-entry/ema-entry", ENTRY_AS_OF)
        holder = wait_for(lambda: _holder(net, prefect.flow_run(entry.id)), 240, "a worker host to run the entry")
        survivor = "b" if holder == "a" else "a"
        died_at = dt.datetime.now(dt.timezone.utc)
        net[holder].kill_all()  # the host dies while it holds the run

        wait_for(lambda: prefect.flow_run(entry.id).state.is_final(), 300, "the entry to end on the surviving host")
        final = prefect.flow_run(entry.id)
        assert final.state.is_completed(), (final.state, final.state.message)
        assert "Failover" in prefect.state_names(entry.id)
        assert final.name.endswith(f" on host-{survivor}"), final.name  # the UI's run list names the host
        assert _holder(net, final) in (survivor, None)  # its process has ended on the survivor
        history = prefect.states(entry.id)
        moved_at = next(st.timestamp for st in history if st.name == "Failover")
        ran_at = next(st.timestamp for st in history if st.timestamp > moved_at and st.is_running())
        print(f"failover: host {holder} died; the run went back to the pool "
              f"{(moved_at - died_at).total_seconds():.0f} s later and ran on host {survivor} "
              f"{(ran_at - died_at).total_seconds():.0f} s after the death")

        # the session's close on the survivor (the exchange's clock moved past the close and its settling)
        moved = gw.run(_tradeflow("paper-clock", "--set", (UPDATE_AS_OF + dt.timedelta(minutes=6)).isoformat()),
                       env={**shared, **state("gw")}, cwd=PROJECT_ROOT)
        assert moved.returncode == 0, moved.stdout + moved.stderr
        update = prefect.ask("ema-update/ema-update", UPDATE_AS_OF)
        wait_for(lambda: prefect.flow_run(update.id).state.is_final(), 600, "the 16:00 update")
        assert prefect.flow_run(update.id).state.is_completed(), prefect.flow_run(update.id).state

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
            decisions = j.query("SELECT count(*) AS n FROM signals WHERE strategy = 'ema'")["n"][0]
            ends = j.query("SELECT deployment, event FROM flow_events WHERE event <> 'started' ORDER BY deployment")
            print(json.dumps({{"orders": orders, "execs": execs, "journal": rows, "decisions": int(decisions),
                              "ends": ends.values.tolist()}}))
        """)], env={**client_env, **state("c"), "IBKR_CLIENT_ID": "300"}, cwd=PROJECT_ROOT)
        assert check.returncode == 0, check.stderr[-3000:]
        seen = json.loads(check.stdout.strip().splitlines()[-1])
        ema = sorted(r for r in seen["orders"] if r and r.startswith("ema-"))
        assert ema == ["ema-SMH-20250527-entry", "ema-SMH-20250527-entry-stop"], seen  # one entry, its one stop
        assert [r for r in seen["execs"] if r and r.startswith("ema-")] == ["ema-SMH-20250527-entry"], seen
        assert sorted(r["order_ref"] for r in seen["journal"]) == ema and seen["decisions"] >= 1, seen
        assert seen["ends"] == [["ema-entry", "completed"], ["ema-update", "completed"]], seen  # nothing lost

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
        assert "not sent: trading halted by tester" in (tmp / "probe.log").read_text()
    finally:
        pg.stop()
