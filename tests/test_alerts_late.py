"""Late runs and a missing worker reach the operator once, from the Prefect server's own automations.

Real Prefect server (the session's), real automations, a local HTTP receiver as the notification target:
- with no worker, an ema-entry run whose scheduled time passes gives exactly one late notification within the
  deployment's late seconds plus a minute;
- 12 missed mtf-signal runs give one late notification carrying their count, and one "picked up again" when a
  worker starts (the backlog it then skips or the concurrency limit cancels notifies at most once each);
- the worker killed gives one "no worker" notification.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import time
from pathlib import Path

import pytest

from core.settings import PROJECT_ROOT
from deployments.alerts import AlertTimes, ensure_alerts
from deployments.deploy import DeploymentSpec, apply, run
from deployments.processes import Child, wait_for, worker_argv
from tests.alert_support import Receiver

pytestmark = pytest.mark.prefect_server

POOL = "tradeflow-test-late"
LATE_SECONDS = {"ema-entry": 30.0, "mtf-signal": 30.0}


async def _client_call(fn):
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await fn(client)


def _schedule(deployment_id: str, when: dt.datetime):
    from prefect.states import Scheduled

    return run(_client_call(lambda c: c.create_flow_run_from_deployment(
        deployment_id, state=Scheduled(scheduled_time=when))))


def _read(run_id):
    return run(_client_call(lambda c: c.read_flow_run(run_id)))


def test_late_runs_notify_once_with_their_count_then_once_when_picked_up_and_a_lost_worker_once(
        prefect_server, prefect_api, state_dir: Path, tmp_path: Path):
    receiver = Receiver()
    specs = [DeploymentSpec("ema-entry", "tests/deploy_flows.py:ema_entry_probe", "late-run probe", ()),
             DeploymentSpec("mtf-signal", "tests/deploy_flows.py:mtf_signal_probe", "late-run probe", ())]
    ids = run(apply(specs, work_pool=POOL)).ids
    times = AlertTimes(late_seconds=LATE_SECONDS, window_seconds=3600, no_worker_seconds=60, work_pool=POOL)
    run(_client_call(lambda c: ensure_alerts(receiver.url, ids, c, times)))
    worker = None
    start = time.time()
    try:
        # no worker: one ema-entry run reaches its time
        scheduled = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=2)
        entry = _schedule(ids["ema-entry"], scheduled)
        # 12 mtf-signal runs whose times (5 minutes apart) passed while nobody took them
        now = dt.datetime.now(dt.timezone.utc)
        missed = [_schedule(ids["mtf-signal"], now - dt.timedelta(minutes=5 * k)) for k in range(12)]

        deadline = scheduled.timestamp() + LATE_SECONDS["ema-entry"] + 60
        wait_for(lambda: receiver.about("ema-entry runs are late"), deadline - time.time(),
                 f"the late notification of ema-entry (server log {prefect_server.log_path})")
        wait_for(lambda: receiver.about("mtf-signal runs are late"), 120, "the late notification of mtf-signal")
        late_entry, = receiver.about("ema-entry runs are late")
        at = receiver.times[receiver.texts().index(late_entry)] - scheduled.timestamp()
        print(f"the ema-entry late notice came {at:.1f} s after the run's time "
              f"(bound {deadline - scheduled.timestamp():g} s)")
        assert "Deployment: ema-entry: a run not started 30 s after its scheduled time" in late_entry
        assert "the worker is not picking up runs" in late_entry and f"--pool {POOL}" in late_entry
        late_mtf, = receiver.about("mtf-signal runs are late")
        # the count is the deployment's work queue's Late runs when the message is rendered, when the server
        # could read them for the triggering run (its late-runs service marks them in batches under SQLite)
        count = re.search(r"Late runs: (\d+) ", late_mtf)
        assert count is None or 1 <= int(count.group(1)) <= 12, late_mtf

        # a worker starts: the backlog is taken, one notification says so
        env = {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_WORKER_QUERY_SECONDS": "1",
               "PREFECT_WORKER_HEARTBEAT_SECONDS": "5", "TRADEFLOW_STATE_DIR": str(state_dir)}
        worker = Child("worker", worker_argv(POOL), tmp_path / "worker.log", env=env, cwd=PROJECT_ROOT).start()
        wait_for(lambda: receiver.about("mtf-signal runs are being picked up again"), 180,
                 f"the picked-up-again notification (worker log {worker.log_path})")
        wait_for(lambda: all(_read(r.id).state.is_final() for r in [entry, *missed]), 180,
                 "every late run to end (skipped or cancelled behind the one running)")
        states = [_read(r.id).state for r in missed]
        assert {s.name for s in states} <= {"SkippedLate", "Cancelled"} and "SkippedLate" in {s.name for s in states}
        wait_for(lambda: [t for t in receiver.texts() if t.startswith("tradeflow: mtf-signal run ")
                          and "SkippedLate" in t], 60,
                 "the skipped-late notification")

        # the worker dies: the pool has no ready worker (before, the new pool had none either, but it was never
        # ready: no outage began, nothing was said)
        assert not receiver.about("no worker in the work pool"), receiver.texts()
        os.killpg(worker.proc.pid, signal.SIGKILL)
        wait_for(lambda: receiver.about("no worker in the work pool"), 240,
                 f"the no-worker notification (server log {prefect_server.log_path})")
    finally:
        if worker is not None:
            worker.stop()
        run(_client_call(lambda c: ensure_alerts(None, ids, c, times)))
        receiver.close()

    texts = receiver.texts()
    subjects = "\n".join(f"{t - start:.0f}s {x[:60]}" for t, x in zip(receiver.times, texts))
    picked = next(i for i, t in enumerate(texts) if "runs are being picked up again" in t)
    before = [t for t in texts[:picked] if "runs are late" in t]
    assert len(before) == 2, subjects  # one per deployment during the outage, however many runs went late
    # re-arming the late automation (its rewrite when the first run is picked up again) says nothing more: one
    # late notice per deployment in the whole test, before and after the worker came back
    for name in ("ema-entry", "mtf-signal"):
        assert len(receiver.about(f"{name} runs are late")) == 1, subjects
    assert len(receiver.about("mtf-signal runs are being picked up again")) == 1, subjects
    assert len(receiver.about("ema-entry runs are being picked up again")) == 1, subjects
    mtf_runs = [t for t in texts if t.startswith("tradeflow: mtf-signal run ")]  # the per-run messages
    mtf_skipped = [t for t in mtf_runs if "SkippedLate" in t]
    mtf_cancelled = [t for t in mtf_runs if "Deployment concurrency limit reached." in t]
    assert all("within 1 h notify nobody" in t for t in mtf_runs), subjects
    assert len(mtf_skipped) == 1 and len(mtf_cancelled) <= 1, subjects  # 12 stale runs: one message each kind
    no_worker, = receiver.about("no worker in the work pool")  # once for the outage, however long it lasted
    assert "has had no ready worker for 60 s" in no_worker, subjects
