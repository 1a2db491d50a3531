"""Sending the daily report and the per-fill notices through the `tradeflow-alerts` block (the one the alert
automations use; TRADEFLOW_ALERT_URL). Best effort: a report that cannot be sent is logged and never fails the
reconciliation (whose own failure is the alert that matters)."""

from __future__ import annotations

import logging

from core.daily_report import daily_report, fill_notice
from core.reconcile import Reconciliation
from tasks.runtime import FlowRun

log = logging.getLogger(__name__)


def artifact_link(key: str) -> str | None:
    """The Prefect UI page of the artifact `key` (its history), or None when the UI URL is unknown."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    ui = PREFECT_UI_URL.value() or (PREFECT_API_URL.value() or "").removesuffix("/api") or None
    return f"{ui.rstrip('/')}/artifacts/key/{key}" if ui else None


def send_reports(run: FlowRun, result: Reconciliation, artifact_key: str) -> int:
    """The daily report (unless TRADEFLOW_DAILY_REPORT=false) and, with TRADEFLOW_FILL_NOTIFICATIONS=true, one
    notice per fill of the day; the number of notifications sent (0 without a block)."""
    s = run.settings
    messages = []
    if s.daily_report:
        messages.append(daily_report(result, artifact_link(artifact_key)))
    if s.fill_notifications:
        messages += [fill_notice(t) for t in result.trades]
    if not messages:
        return 0
    try:
        from deployments.alerts import load_block

        block = load_block()
    except Exception as exc:  # noqa: BLE001 - no block (TRADEFLOW_ALERT_URL unset) or no server
        log.info("daily report not sent: %s", exc)
        return 0
    sent = 0
    for subject, body in messages:
        try:
            block.notify(subject=subject, body=body, _sync=True)
            sent += 1
        except Exception as exc:  # noqa: BLE001 - the URL may be in the error: type only
            log.warning("a report notification was not delivered: %s", type(exc).__name__)
    return sent
