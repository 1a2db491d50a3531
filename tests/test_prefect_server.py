"""The locked stack runs a real Prefect server whose scheduler creates runs.

DESIGN.md records two silent breakages of Prefect 3.8 with newer packages (fastapi 0.165 breaks
`prefect server start`; SQLAlchemy 2.1 stops the scheduler with no visible error but the server log). This
test starts `prefect server start` from the project environment (temporary PREFECT_HOME, loopback, free
port), creates a deployment with a schedule, and waits for the scheduler to create its runs.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from core.calendar import NY

pytestmark = pytest.mark.prefect_server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)  # polling interval of a condition wait, not a wait for time to pass
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
        "PREFECT_SERVER_UI_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    log_path = Path(home) / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"

    def healthy():
        if proc.poll() is not None:
            raise AssertionError(f"prefect server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _wait_for(healthy, 120, "the Prefect server's health endpoint")
        yield url, log_path
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()


def test_the_scheduler_creates_runs_of_a_scheduled_deployment(prefect_server, monkeypatch):
    url, log_path = prefect_server
    monkeypatch.setenv("PREFECT_API_URL", url)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.schedules import CronSchedule

    async def create() -> str:
        async with get_client() as client:
            flow_id = await client.create_flow_from_name("scheduler-probe")
            deployment_id = await client.create_deployment(
                flow_id=flow_id,
                name="ema-entry-probe",
                entrypoint="flows/ema_entry.py:ema_entry",
                schedules=[DeploymentScheduleCreate(
                    schedule=CronSchedule(cron="55 15 * * 1-5", timezone="America/New_York"), active=True
                )],
            )
            return str(deployment_id)

    async def scheduled_runs(deployment_id: str):
        async with get_client() as client:
            return await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            )

    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}):
        deployment_id = asyncio.run(create())
        runs = _wait_for(lambda: asyncio.run(scheduled_runs(deployment_id)), 90, "scheduled flow runs")
    assert all(r.state_type.value == "SCHEDULED" for r in runs)
    times = sorted(r.expected_start_time.astimezone(NY) for r in runs)
    assert all((t.hour, t.minute, t.weekday() < 5) == (15, 55, True) for t in times)
    assert times[0] > dt.datetime.now(NY) - dt.timedelta(minutes=1)
    log = log_path.read_text()
    assert "InvalidRequestError" not in log and "Traceback" not in log, log[-3000:]
