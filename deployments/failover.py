"""Failover: a run whose host died is given back to the work pool, to run again on a surviving worker.

Prefect marks nothing when the host of a running flow dies: its run stays Running (a "zombie"), holding its
deployment's one slot. Flow runs started by a worker send a heartbeat event every
`HEARTBEAT_SECONDS` (PREFECT_FLOWS_HEARTBEAT_FREQUENCY, set in every worker's environment by `tradeflow up`;
Prefect's minimum is 30 s, its default 180 s). One automation (Prefect's documented zombie detection, "Detect zombie
flows", with a different action) watches each run: after a heartbeat it expects another heartbeat, or the run's end,
within `SILENCE_SECONDS`; when none comes it sets the run back to Scheduled, named "Failover", with a message saying
so. The run keeps its expected start time (Prefect sets it once), so its `as_of` and its late guard are unchanged:
an order flow that is rescheduled after its window is skipped as late and alerts, as any late run; inside it, it
runs again on whichever worker polls first, idempotent by orderRef as every rerun is (an order the dead host had
sent is found at the broker and not sent again).

How fast: a host that dies just after a heartbeat is noticed `SILENCE_SECONDS` after that heartbeat, at most
HEARTBEAT_SECONDS + SILENCE_SECONDS = 75 s after it died; a surviving worker picks the run up within its poll
interval. The order flows' late window is 3 minutes (TRADEFLOW_LATE_RUN_MAX_MINUTES).

A run whose worker saw its process die (the host lives: out of memory, killed) is Crashed by the worker and alerts;
it is not rerun (a crash on a live host may repeat).
"""

from __future__ import annotations

from typing import Any

HEARTBEAT_SECONDS = 30
"""PREFECT_FLOWS_HEARTBEAT_FREQUENCY of every flow run a worker starts (Prefect's minimum)."""
SILENCE_SECONDS = 45
"""A run without a heartbeat (or end) this long after its last heartbeat is taken as its host's death."""
AUTOMATION_NAME = "tradeflow: rerun a run whose host is gone"
STATE_NAME = "Failover"

ENDS = ("prefect.flow-run.Completed", "prefect.flow-run.Failed", "prefect.flow-run.Cancelled",
        "prefect.flow-run.Crashed", "prefect.flow-run.Cancelling")


def worker_env() -> dict[str, str]:
    """The environment a worker's flow runs need for failover (their heartbeats)."""
    return {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS)}


def failover_automation() -> Any:
    """The automation (module docstring), as Prefect's `AutomationCore`."""
    from datetime import timedelta

    from prefect.automations import AutomationCore, EventTrigger, Posture
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.events import ResourceSpecification

    return AutomationCore(
        name=AUTOMATION_NAME,
        description=f"After a heartbeat, a run that sends neither another one nor its end within {SILENCE_SECONDS} "
                    "s lost its host: it goes back to Scheduled (state 'Failover') for a surviving worker; its "
                    "late guard still applies.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *ENDS},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=SILENCE_SECONDS),
        ),
        actions=[ChangeFlowRunState(state=StateType.SCHEDULED, name=STATE_NAME, force=True,
                                    message=f"no heartbeat for {SILENCE_SECONDS} s: its host is gone; scheduled again "
                                            "for a surviving worker (its late guard still applies)")],
    )


async def ensure_failover(client: Any) -> str:
    """Create or replace the failover automation on the server `client` talks to; returns its id."""
    from deployments.alerts import upsert_automation

    return await upsert_automation(client, failover_automation())
