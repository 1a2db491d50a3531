"""Alerts: a deployment run that fails (here: no broker listens where the settings point), is skipped as late,
or is cancelled because the previous run of its deployment is stuck (concurrency limit 1, CANCEL_NEW) produces
exactly one notification each, at a local HTTP receiver, naming the deployment, the run (with its UI link), as_of
and the error. Real server, real process worker, real automations and notification blocks."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from core.journal import Journal
from core.settings import PROJECT_ROOT
from deployments.alerts import FAILED_AUTOMATION, STUCK_AUTOMATION, ensure_alerts
from deployments.deploy import DeploymentSpec, apply, run
from deployments.processes import Child, free_port, wait_for, worker_argv
from tests.alert_support import Receiver

pytestmark = pytest.mark.prefect_server

POOL = "tradeflow-test-alerts"
AS_OF = "2026-03-02T15:55:00-05:00"


async def _ensure(url: str, ids: dict):
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await ensure_alerts(url, ids, client)


def test_failing_late_and_cancelled_behind_a_stuck_run_each_notify_once_through_a_webhook_or_apprise(
        prefect_server, prefect_api, state_dir: Path, tmp_path: Path):
    from prefect.client.orchestration import get_client

    receiver = Receiver()
    dead_port = free_port()  # nothing listens: the broker connection fails naming host and port
    specs = [DeploymentSpec("alert-probe", "tests/deploy_flows.py:alert_probe", "fails: no broker", ()),
             DeploymentSpec("late-probe", "tests/deploy_flows.py:late_probe", "skips as late", ()),
             DeploymentSpec("stuck-probe", "tests/deploy_flows.py:stuck_probe", "runs until released", ())]

    result = run(apply(specs, work_pool=POOL))
    # their schemas read from the source files match what the server stores: a second apply changes nothing
    assert sorted(run(apply(specs, work_pool=POOL)).unchanged) == ["alert-probe", "late-probe", "stuck-probe"]
    alerts = run(_ensure(receiver.url, result.ids))
    assert result.missing_flows == [] and {FAILED_AUTOMATION, STUCK_AUTOMATION} <= set(alerts.automation_ids)
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_WORKER_QUERY_SECONDS": "1",
           "IBKR_HOST": "127.0.0.1", "IBKR_PORT": str(dead_port), "TRADEFLOW_STATE_DIR": str(state_dir)}
    worker = Child("worker", worker_argv(POOL), tmp_path / "worker.log", env=env, cwd=PROJECT_ROOT).start()

    async def start(name: str, parameters: dict):
        async with get_client() as client:
            return await client.create_flow_run_from_deployment(result.ids[name], parameters=parameters)

    async def read(run_id):
        async with get_client() as client:
            return await client.read_flow_run(run_id)

    def mentioning(run) -> list[dict]:
        return [b for b in receiver.bodies if str(run.id) in b.get("body", b.get("message", ""))]

    try:
        failing = run(start("alert-probe", {"as_of": AS_OF}))
        wait_for(lambda: mentioning(failing), 180, f"the notification of the failing run (worker log "
                 f"{worker.log_path}: {worker.log_tail(500)!r})")
        late = run(start("late-probe", {}))
        wait_for(lambda: mentioning(late), 180, "the notification of the late run")
        # a stuck run does not pile up runs behind it: the next one is cancelled at once, and that notifies
        release = tmp_path / "release"
        stuck = run(start("stuck-probe", {"release": str(release)}))
        wait_for(lambda: run(read(stuck.id)).state.is_running(), 180, "the stuck run to run")
        behind = run(start("stuck-probe", {"release": str(release)}))
        wait_for(lambda: mentioning(behind), 180, "the notification of the run cancelled behind the stuck one")
        release.touch()
        wait_for(lambda: run(read(stuck.id)).state.is_completed(), 180, "the stuck run to end once released")
        # the same through an Apprise URL (its generic JSON notifier): another block type, same automation
        apprise_url = receiver.url.replace("http://", "json://")
        run(_ensure(apprise_url, result.ids))
        again = run(start("alert-probe", {"as_of": AS_OF}))
        wait_for(lambda: mentioning(again), 180, "the notification of the failing run through Apprise")
    finally:
        worker.stop()
        receiver.close()
    failing, late, behind = run(read(failing.id)), run(read(late.id)), run(read(behind.id))
    assert failing.state.name == "Failed" and (late.state.type.value, late.state.name) == ("COMPLETED", "SkippedLate")
    assert behind.state.is_cancelled() and behind.state.message == "Deployment concurrency limit reached."
    # the messages about one run (not the pool's no-worker alert, nor a deployment's late-runs ones)
    per_run = [b for b in receiver.bodies if re.match(r"tradeflow: \S+ run \S", b.get("subject", b.get("title", "")))]
    assert len(per_run) == 4 and [len(mentioning(r)) for r in (failing, late, behind, again)] == [1] * 4
    assert not mentioning(stuck)  # the run that completed notifies nobody
    assert "Deployment: stuck-probe" in mentioning(behind)[0]["body"]
    assert mentioning(again)[0]["title"].startswith("tradeflow: alert-probe run") and \
        f"127.0.0.1:{dead_port}" in mentioning(again)[0]["message"]

    body = mentioning(failing)[0]["body"]
    assert "Deployment: alert-probe" in body and f"Run: {failing.name} ({failing.id})" in body
    assert f"{prefect_server.ui_url}/runs/flow-run/{failing.id}" in body
    assert f"as_of: {AS_OF}" in body and f"127.0.0.1:{dead_port}" in body
    assert "alert-probe" in mentioning(failing)[0]["subject"] and "Failed" in mentioning(failing)[0]["subject"]
    late_body = mentioning(late)[0]["body"]
    assert "Deployment: late-probe" in late_body and "SkippedLate" in late_body
    assert "as_of: the scheduled start" in late_body and "started 12.0 minutes after" in late_body
    # the flow journaled the failure with the same error (issue 8: no exchange -> the run fails naming host, port)
    events = Journal(state_dir / "journal.duckdb").query(
        "SELECT deployment, event, outcome FROM flow_events WHERE event = 'failed'")
    assert set(events["deployment"]) == {"alert-probe"} and len(events) == 2
    assert all(f"127.0.0.1:{dead_port}" in outcome for outcome in events["outcome"])
