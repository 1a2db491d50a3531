"""Flow `reconciliation` (17:00 each session): the broker against the journal, repairs, breaks, daily P&L.

What it does is `tasks.reconcile.reconcile_account` (each step a Prefect task) and, in `core.reconcile`, what is
decided. It publishes two artifacts: `reconciliation` (the day's trades, P&L per strategy, positions and breaks,
with a table artifact of the trades) and `reconciliation-equity-curve` (the equity curve with its drawdown, a PNG
inline in markdown as a base64 data URI, which the Prefect UI shows; the same PNG is written to
`<state dir>/reports/equity-<session>.png`).

When positions disagree, or a break is still unresolved, the run ends **Failed** with a message naming the
symbols, after every repair, the breaks, the P&L and the artifacts are recorded: the failure is the alert (the
automation notifies on Failed runs), and the recorded break blocks orders for the symbol until
`tradeflow resolve SYMBOL --note "..."`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NONE

from core.reconcile import PositionBreaksFound
from core.reconcile_report import format_markdown
from tasks.reconcile import reconcile_account
from tasks.report import send_reports
from tasks.run_policy import run_policy
from tasks.runtime import flow_run
from tasks.ui import publish_charts, run_name

DEPLOYMENT = "reconciliation"


def _as_task(fn):
    return task(fn, name=fn.__name__.replace("_", "-"), cache_policy=NONE)


@flow(name=DEPLOYMENT, flow_run_name=run_name(DEPLOYMENT), **run_policy(DEPLOYMENT))
def reconciliation(as_of: datetime | None = None) -> dict[str, Any]:
    """Reconcile the account for the session of `as_of` (default: the run's scheduled start) and record its P&L.

    Returns a summary dict (what was recorded, breaks, net P&L per strategy, end-of-day equity).

    Raises:
        PositionBreaksFound: positions disagree or a break is unresolved (after recording everything).
        core.broker.BrokerError: the broker could not be read (nothing recorded).
    """
    with flow_run(DEPLOYMENT, as_of) as run:
        with run.broker() as broker:
            result = reconcile_account(broker, run.journal, run.as_of, run_id=run.run_id, step=_as_task)
        run.publish(format_markdown(result), table=[{**t, "exec_time": t["exec_time"].isoformat()}
                                                    for t in result.trades])
        publish_charts(run, result.day)
        send_reports(run, result, DEPLOYMENT)  # the daily report (and per-fill notices), breaks or not
        summary = result.summary()
        run.details = summary
        failure = result.failure
        run.outcome = failure or (f"{result.day}: journal agrees with the broker; "
                                  f"{sum(result.recorded.get(k, 0) for k in ('executions', 'external_orders'))} "
                                  f"execution(s)/order(s) added; P&L {result.pnl_note}")
        if failure:
            raise PositionBreaksFound(failure)
        return summary

