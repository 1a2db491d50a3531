"""Failover: a run whose host died is given back to the work pool, to run again on a surviving worker.

Prefect marks nothing when the host of a running flow dies: its run stays Running (a "zombie"), holding its
deployment's one slot; a run its worker had submitted but whose process had not started yet stays Pending. Flow
runs started by a worker send a heartbeat event when they start and every `HEARTBEAT_SECONDS` after
(PREFECT_FLOWS_HEARTBEAT_FREQUENCY, set in every worker's environment by `tradeflow up`, `deployments.processes.worker_env`; Prefect's minimum is 30 s,
its default 180 s). Two automations (Prefect's documented zombie detection, "Detect zombie flows", with a different
action) watch each run: after a heartbeat, another heartbeat or the run's end must come within `SILENCE_SECONDS`;
after Pending, Running (or an end) within `START_SECONDS`. When neither comes they set the run back to Scheduled,
named "Failover", with a message saying so. The run keeps its expected start time (Prefect sets it once), so its `as_of` and its late guard are unchanged:
an order flow that is rescheduled after its window is skipped as late and alerts, as any late run; inside it, it
runs again on whichever worker polls first, idempotent by orderRef as every rerun is (an order the dead host had
sent is found at the broker and not sent again).

How fast: a host that dies while its run runs is noticed at most HEARTBEAT_SECONDS + SILENCE_SECONDS = 75 s after it
died; one that dies while starting the run, at most START_SECONDS = 90 s after the run went Pending. A surviving
worker picks the run up within its poll interval and starts it within seconds. The order flows' late window is 3
minutes (TRADEFLOW_LATE_RUN_MAX_MINUTES). START_SECONDS is well above a flow process's start here (about 5 s idle,
20 s under load): a run rescheduled while its process still lives would be refused its Running state by the
server, and every order is idempotent by orderRef besides.

A run whose worker saw its process die (the host lives: out of memory, killed) is Crashed by the worker and alerts;
it is not rerun (a crash on a live host may repeat).
"""

from __future__ import annotations

from typing import Any

HEARTBEAT_SECONDS = 30
"""PREFECT_FLOWS_HEARTBEAT_FREQUENCY of every flow run a worker starts (Prefect's minimum)."""
SILENCE_SECONDS = 45
"""A run without a heartbeat (or end) this long after its last heartbeat is taken as its host's death."""
START_SECONDS = 90
"""A run Pending this long without Running (or an end) is taken as lost with its host while starting."""
AUTOMATION_NAME = "tradeflow: rerun a run whose host is gone"
START_AUTOMATION_NAME = "tradeflow: rerun a run whose host died while starting it"
STATE_NAME = "Failover"

ENDS = ("prefect.flow-run.Completed", "prefect.flow-run.Failed", "prefect.flow-run.Cancelled",
        "prefect.flow-run.Crashed", "prefect.flow-run.Cancelling")


def _automation(name: str, description: str, after: str, expect: set[str], within: int, why: str) -> Any:
    from datetime import timedelta

    from prefect.automations import AutomationCore, EventTrigger, Posture
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.events import ResourceSpecification

    return AutomationCore(
        name=name, description=description,
        trigger=EventTrigger(after={after}, expect=expect | set(ENDS),
                             match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
                             for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
                             within=timedelta(seconds=within)),
        actions=[ChangeFlowRunState(state=StateType.SCHEDULED, name=STATE_NAME, force=True,
                                    message=f"{why}: its host is gone; scheduled again for a surviving worker (its "
                                            "late guard still applies)")],
    )


def failover_automations() -> list[Any]:
    """The two automations (module docstring), as Prefect's `AutomationCore`s."""
    return [
        _automation(AUTOMATION_NAME, f"After a heartbeat, a run that sends neither another one nor its end within "
                    f"{SILENCE_SECONDS} s lost its host: it goes back to Scheduled (state 'Failover') for a surviving "
                    "worker; its late guard still applies.", "prefect.flow-run.heartbeat",
                    {"prefect.flow-run.heartbeat"}, SILENCE_SECONDS, f"no heartbeat for {SILENCE_SECONDS} s"),
        _automation(START_AUTOMATION_NAME, f"A run Pending for {START_SECONDS} s without starting lost its host while "
                    "it started the run: it goes back to Scheduled (state 'Failover'); its late guard still applies.",
                    "prefect.flow-run.Pending", {"prefect.flow-run.Running"}, START_SECONDS,
                    f"Pending for {START_SECONDS} s without starting"),
    ]


async def ensure_failover(client: Any) -> list[str]:
    """Create or replace the failover automations on the server `client` talks to; returns their ids."""
    from deployments.alerts import upsert_automation

    return [await upsert_automation(client, automation) for automation in failover_automations()]
