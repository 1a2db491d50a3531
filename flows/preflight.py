"""Flow `preflight` (09:00 New York every session, half an hour before the open): the pre-open checklist of
`core.preflight` (connection, account and trading mode, market data per symbol, buying power for the EMA
entry, MTF champions and their age, kill switch, position breaks, free disk, the deployed schedule window).

Every item is in the run's artifact (`preflight`, a checklist table); any red item fails the run with a message
naming each red item and why, so the failure alert says it hours before the 15:55 entry. It sends no order.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from prefect import flow

from core.preflight import (PreflightLimits, as_table, checklist_markdown, evaluate, failure_message,
                            red_items)
from tasks.preflight import broker_facts, local_facts, new_facts, schedule_window
from tasks.run_policy import run_policy
from tasks.runtime import flow_run
from tasks.ui import publish_status, run_name

log = logging.getLogger(__name__)

DEPLOYMENT = "preflight"


class PreflightRed(RuntimeError):
    """A red checklist item; the message names each one and why."""


@flow(name=DEPLOYMENT, flow_run_name=run_name(DEPLOYMENT), **run_policy(DEPLOYMENT))
def preflight(as_of: datetime | None = None) -> dict[str, Any]:
    """Run the checklist for `as_of` (default: the run's scheduled start). Returns {item: status}.

    Raises:
        PreflightRed: any item is red (after the artifact is published).
    """
    with flow_run(DEPLOYMENT, as_of) as run:
        facts = new_facts(run)
        broker_facts(run, facts)
        local_facts(run, facts)
        facts.schedule_ends = schedule_window()
        s = run.settings
        items = evaluate(facts, run.as_of, PreflightLimits(min_free_mb=s.preflight_min_free_mb,
                                                           max_model_age_days=s.preflight_max_model_age_days,
                                                           min_schedule_days=s.preflight_min_schedule_days))
        run.publish(checklist_markdown(items, run.as_of), table=as_table(items))
        run.details = {i.name: i.status for i in items}
        try:  # the morning status screen (`tradeflow status`) beside the checklist; never turns a check red
            publish_status(run)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not publish the status screen: %s: %s", type(exc).__name__, exc)
        if red_items(items):
            raise PreflightRed(failure_message(items))
        run.outcome = "green"
        return run.details
