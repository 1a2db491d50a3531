"""Failure alerts: Prefect Automations that send a notification through a Prefect notification block.

What fires (Prefect 3.8 emits one event per flow-run state change, named `prefect.flow-run.<state name>`, so a
custom-named state has its own event name):

- `tradeflow: run failed, crashed or skipped late`: a run of one of the deployments reaches state *Failed*
  (`prefect.flow-run.Failed`), *Crashed* (`prefect.flow-run.Crashed`: its process died, which an `on_failure`
  hook would never see), or ends as the Cancelled state named *SkippedLate* (`prefect.flow-run.SkippedLate`,
  `tasks.runtime.LATE_STATE_NAME`: it started too late to trade).
- `tradeflow: run cancelled, the previous one still running`: a run cancelled by the deployment's concurrency
  limit (`prefect.flow-run.Cancelled` with the server's message "Deployment concurrency limit reached."), the
  sign of a stuck run; a run cancelled by hand does not notify.

Both match the deployments by id (`match_related`), one notification per event (threshold 1, per flow run).

Where it goes: `TRADEFLOW_ALERT_URL` (a secret: stored in the block, never printed or logged).
- An URL Apprise knows (`slack://...`, `https://hooks.slack.com/...`, `mailto://...`, `tgram://...`,
  `json://host/path`, `ntfy://...`, ...): Prefect's Slack Webhook block, which sends any URL that is not a Slack
  webhook through Apprise as it is (Prefect 3.8 registers no generic Apprise block).
- Any other `http(s)://` URL: a generic webhook (Prefect's Custom Webhook block) that POSTs JSON
  `{"text": subject + body, "subject": ..., "body": ...}`.
The block is named `tradeflow-alerts`; without TRADEFLOW_ALERT_URL no automation is created (and `tradeflow
deploy` / `tradeflow up` say so), since an automation without a target would notify nobody.

The message names the deployment, the run (name, id and a link to it in the UI), `as_of` (the flow parameter;
empty means the run's scheduled start, printed then) and the error (the final state's message).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

BLOCK_NAME = "tradeflow-alerts"
FAILED_AUTOMATION = "tradeflow: run failed, crashed or skipped late"
STUCK_AUTOMATION = "tradeflow: run cancelled, the previous one still running"
CONCURRENCY_MESSAGE = "Deployment concurrency limit reached."
"""The message Prefect's server gives a run cancelled by a deployment concurrency limit (CANCEL_NEW)."""

SUBJECT = "tradeflow: {{ deployment.name }} run {{ flow_run.name }} {{ flow_run.state.name }}"
BODY = """\
Deployment: {{ deployment.name }} (prefect deployment run '{{ flow.name }}/{{ deployment.name }}')
Run: {{ flow_run.name }} ({{ flow_run.id }})
Link: {{ flow_run|ui_url }}
State: {{ flow_run.state.name }} ({{ flow_run.state.type.value }}) at {{ flow_run.state.timestamp }}
as_of: {% if flow_run.parameters.get('as_of') %}{{ flow_run.parameters['as_of'] }}\
{% else %}the scheduled start, {{ flow_run.expected_start_time }}{% endif %}
Error: {{ flow_run.state.message or '(no message)' }}
"""


class AlertConfigError(ValueError):
    """TRADEFLOW_ALERT_URL is neither an Apprise URL nor an http(s) webhook (the message shows its scheme only)."""


def notification_block(url: str) -> Any:
    """The Prefect notification block for `url` (see the module docstring).

    Raises:
        AlertConfigError: an URL neither Apprise nor http(s) understands.
    """
    import logging

    import apprise
    from pydantic import SecretStr

    apprise_log = logging.getLogger("apprise")
    was, apprise_log.disabled = apprise_log.disabled, True  # its "Unparseable URL ..." would log the secret
    try:
        known = apprise.Apprise().add(url)
    finally:
        apprise_log.disabled = was
    if known:
        # Prefect 3.8 registers no generic Apprise block (AppriseNotificationBlock is an interface); its Slack
        # Webhook block passes any URL that is not a Slack webhook to Apprise unchanged, so it serves every
        # Apprise URL (the UI lists it as a Slack Webhook block)
        from prefect.blocks.notifications import SlackWebhook

        return SlackWebhook(url=SecretStr(url), notify_type="failure")
    if url.startswith(("http://", "https://")):
        from prefect.blocks.notifications import CustomWebhookNotificationBlock

        return CustomWebhookNotificationBlock(
            name=BLOCK_NAME, url=url, method="POST",
            json_data={"text": "{{subject}}\n\n{{body}}", "subject": "{{subject}}", "body": "{{body}}"})
    scheme = url.split(":", 1)[0] if ":" in url else "(none)"
    raise AlertConfigError(f"TRADEFLOW_ALERT_URL: scheme {scheme!r} is neither an Apprise URL "
                           "(https://github.com/caronc/apprise/wiki) nor an http(s) webhook")


@dataclass
class AlertsResult:
    """What `ensure_alerts` did: the block document id and automation ids (None when no URL is set)."""

    block_id: str | None
    automation_ids: dict[str, str]


def automations(deployment_ids: Mapping[str, str], block_id: Any) -> list[Any]:
    """The two automations (Prefect `AutomationCore`) for the deployments `deployment_ids` (name -> id)."""
    from prefect.automations import AutomationCore, EventTrigger, Posture, SendNotification

    related = {"prefect.resource.role": "deployment",
               "prefect.resource.id": [f"prefect.deployment.{i}" for i in deployment_ids.values()]}
    action = SendNotification(block_document_id=block_id, subject=SUBJECT, body=BODY)
    names = ", ".join(sorted(deployment_ids))
    return [
        AutomationCore(
            name=FAILED_AUTOMATION,
            description=f"Notify {BLOCK_NAME} when a run of {names} ends Failed, Crashed or SkippedLate.",
            trigger=EventTrigger(
                expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed", "prefect.flow-run.SkippedLate"},
                match={"prefect.resource.id": "prefect.flow-run.*"}, match_related=related,
                for_each={"prefect.resource.id"}, posture=Posture.Reactive, threshold=1),
            actions=[action]),
        AutomationCore(
            name=STUCK_AUTOMATION,
            description=f"Notify {BLOCK_NAME} when a run of {names} is cancelled because the previous run of its "
                        "deployment is still running (concurrency limit 1, CANCEL_NEW).",
            trigger=EventTrigger(
                expect={"prefect.flow-run.Cancelled"},
                match={"prefect.resource.id": "prefect.flow-run.*", "prefect.state-message": CONCURRENCY_MESSAGE},
                match_related=related, for_each={"prefect.resource.id"}, posture=Posture.Reactive, threshold=1),
            actions=[action]),
    ]


async def ensure_alerts(url: str | None, deployment_ids: Mapping[str, str], client: Any) -> AlertsResult:
    """Create or update the notification block and the two automations; with no `url`, delete the automations
    (a notification nobody receives is not an alert).

    Args:
        url: the secret TRADEFLOW_ALERT_URL value (None: not set).
        deployment_ids: name -> deployment id (`deployments.deploy.apply`).
        client: a Prefect client.

    Raises:
        AlertConfigError: see `notification_block`.
    """
    wanted = {FAILED_AUTOMATION, STUCK_AUTOMATION}
    if not url:
        for name in wanted:
            for a in await client.read_automations_by_name(name):
                await client.delete_automation(a.id)
        return AlertsResult(None, {})
    block = notification_block(url)
    block_id = await block.asave(BLOCK_NAME, overwrite=True, client=client)
    ids: dict[str, str] = {}
    for automation in automations(deployment_ids, block_id):
        existing = await client.read_automations_by_name(automation.name)
        if existing:
            await client.update_automation(existing[0].id, automation)
            for extra in existing[1:]:
                await client.delete_automation(extra.id)
            ids[automation.name] = str(existing[0].id)
        else:
            ids[automation.name] = str(await client.create_automation(automation))
    return AlertsResult(str(block_id), ids)
