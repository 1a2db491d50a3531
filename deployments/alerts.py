"""Alerts: Prefect Automations that send a notification through a Prefect notification block.

What fires (Prefect 3.8 emits one event per flow-run state change, named `prefect.flow-run.<state name>`, so a
custom-named state has its own event name). Every automation runs in the Prefect server, so it fires when a flow's
process, or every worker, is gone:

- `tradeflow: run failed or crashed`: a run of one of the deployments reaches state *Failed*
  (`prefect.flow-run.Failed`), *TimedOut* (the flow's timeout, a Failed state of that name) or *Crashed*
  (`prefect.flow-run.Crashed`: its process died, which an `on_failure` hook would never see). One per run.
- `tradeflow: <deployment> runs late` (one per deployment): the server's late-runs service marks a Scheduled run
  *Late* `PREFECT_SERVER_SERVICES_LATE_RUNS_AFTER_SECONDS` (15 s) after its scheduled time. A Proactive trigger
  (`after` Late, `expect` a run taken or ended, `for_each` the deployment) opens one bucket per deployment at the
  first Late mark (further Late marks fall into the open bucket) and, when no run of the deployment is taken within
  the rest of the deployment's `TRADEFLOW_LATE_ALERT_SECONDS` (Prefect evaluates a Proactive trigger again `within`
  after its last evaluation unless one of its buckets ends sooner, so a bucket opened in between fires between its end
  and one `within` later: N to N + `within` - 15 s after the run's time), notifies with the number of the deployment's
  runs that are Late at that moment (each deployment has a work queue of its own in the pool, so the queue's
  `late_runs_count` counts that deployment's; a Prefect automation cannot count events). `for_each` matters: Prefect
  evaluates a Proactive trigger without `for_each` on a bucket it opens itself every `within` (its
  `proactive_evaluation` ignores `after` then), so it would fire every `within` with no run Late at all. The
  notification pauses its own automation: one message per outage, however many runs go late. The deployment's next run
  that starts (`tasks.runtime.flow_run` -> `rearm_after_outage`) rewrites it enabled and sends one "runs are being
  picked up again" (see `late_automation` for why not a ResumeAutomation action).
- `tradeflow: run skipped late` and `tradeflow: run cancelled, the previous one still running`: a run that ended
  *SkippedLate* (started more than TRADEFLOW_LATE_RUN_MAX_MINUTES late by the broker's clock) or was cancelled by
  the deployment's concurrency limit (message "Deployment concurrency limit reached."). After an outage a worker
  takes the whole backlog at once: one stale run starts and skips, the concurrency limit cancels the others. So
  both notify at most once per deployment per `TRADEFLOW_ALERT_WINDOW_SECONDS` (a Reactive trigger, threshold 1,
  `for_each` the deployment: Prefect ignores the bucket's further events until the window ends).
- `tradeflow: no worker in the tradeflow pool`: the pool goes *not ready* (`prefect.work-pool.not-ready`: the
  server's foreman saw no worker heartbeat for 3 heartbeat intervals, 90 s by default, and emits it once, when
  the pool goes from ready to not ready) and does not go *ready* again within `TRADEFLOW_NO_WORKER_ALERT_SECONDS`
  (a Proactive trigger, `after` not-ready, `expect` ready): one notification per outage.

Where it goes: `TRADEFLOW_ALERT_URL` (a secret: stored in a secret field of the block, never printed or logged).
- An URL Apprise knows (`slack://...`, `https://hooks.slack.com/...`, `mailto://...`, `tgram://...`,
  `json://host/path`, `ntfy://...`, ...): Prefect's Slack Webhook block, which sends any URL that is not a Slack
  webhook through Apprise as it is (Prefect 3.8 registers no generic Apprise block).
- Any other `http(s)://` URL: a generic webhook (Prefect's Custom Webhook block) that POSTs JSON
  `{"text": subject + body, "subject": ..., "body": ...}`; the URL is its `secrets` entry `url` and the block's
  URL field is the template `{{url}}`, so the Blocks page never shows it.
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
FAILED_AUTOMATION = "tradeflow: run failed or crashed"
SKIPPED_AUTOMATION = "tradeflow: run skipped late"
STUCK_AUTOMATION = "tradeflow: run cancelled, the previous one still running"
NO_WORKER_AUTOMATION = "tradeflow: no worker in the tradeflow pool"
LATE_AUTOMATION = "tradeflow: {deployment} runs late"
CONCURRENCY_MESSAGE = "Deployment concurrency limit reached."
"""The message Prefect's server gives a run cancelled by a deployment concurrency limit (CANCEL_NEW)."""
SERVER_LATE_AFTER_SECONDS = 15.0
"""PREFECT_SERVER_SERVICES_LATE_RUNS_AFTER_SECONDS (Prefect's default, which `tradeflow up` keeps): a Scheduled
run is marked Late this long after its scheduled time (the service loops every second on `tradeflow up`'s server:
`deployments.processes.alert_services_env`)."""
TAKEN_EVENTS = {f"prefect.flow-run.{name}" for name in (
    "Pending", "Running", "Cancelling", "Cancelled", "Completed", "Failed", "Crashed", "TimedOut", "SkippedLate")}
"""A run of the deployment was taken (or ended) after a Late mark: the late alert waits for one of these. A backlog
run the concurrency limit cancels goes Late -> Cancelled without Pending; it must not look late after the rest."""
OLD_AUTOMATIONS = ("tradeflow: run failed, crashed or skipped late",)
"""Names earlier versions created; `ensure_alerts` deletes them."""

SUBJECT = ("{% if 'ORDERS SENT' in (flow_run.state.message or '') %}ORDERS SENT, JOURNAL BEHIND: {% endif %}"
           "tradeflow: {{ deployment.name }} run {{ flow_run.name }} {{ flow_run.state.name }}")
"""A run's notice subject. A run that sent orders its journal could not record (core/orders.py's
JournalBehindError, whose message starts "ORDERS SENT, JOURNAL BEHIND") says so first, where a phone shows it."""
BODY = """\
Deployment: {{ deployment.name }} (prefect deployment run '{{ flow.name }}/{{ deployment.name }}')
Run: {{ flow_run.name }} ({{ flow_run.id }})
Link: {{ flow_run|ui_url }}
State: {{ flow_run.state.name }} ({{ flow_run.state.type.value }}) at {{ flow_run.state.timestamp }}
as_of: {% if flow_run.parameters.get('as_of') %}{{ flow_run.parameters['as_of'] }}\
{% else %}the scheduled start, {{ flow_run.expected_start_time }}{% endif %}
Error: {{ flow_run.state.message or '(no message)' }}
"""
THROTTLED = "\n(Further such runs of {{{{ deployment.name }}}} within {window} notify nobody.)\n"

LATE_SUBJECT = "tradeflow: {deployment} runs are late: the worker is not picking up runs"
LATE_BODY = """\
Deployment: {deployment}: a run not started {seconds:g} s after its scheduled time
{{% if work_queue %}}Late runs: {{{{ work_queue.late_runs_count }}}} (marked Late by now)
{{% endif %}}{{% if flow_run %}}First: {{{{ flow_run.name }}}} ({{{{ flow_run.id }}}}), scheduled \
{{{{ flow_run.expected_start_time }}}}
Link: {{{{ flow_run|ui_url }}}}
{{% endif %}}What it means: no worker is taking runs from the work pool '{pool}'. Is `tradeflow up` (or
`prefect worker start --pool {pool}`) running, and does it reach the Prefect server?
When a worker comes back, order flows started more than {late_minutes:g} minutes after their time trade nothing
(SkippedLate). No further late runs of {deployment} are notified until its runs are picked up again.
"""
RESUMED_SUBJECT = "tradeflow: {deployment} runs are being picked up again"
RESUMED_BODY = """\
Deployment: {deployment}: a run started again after the late-run notification.
Runs whose time passed while nobody took them: order flows skip them as late (SkippedLate), the concurrency limit
cancels the rest of the backlog; see
./run sql "SELECT * FROM flow_events WHERE deployment = '{deployment}' ORDER BY recorded_at DESC LIMIT 20"
"""
NO_WORKER_SUBJECT = "tradeflow: no worker in the work pool {pool}"
NO_WORKER_BODY = """\
The work pool '{pool}' has had no ready worker for {seconds:g} s (marked not ready at {{{{ event.occurred }}}}; the
server counts a worker gone after three missed heartbeats, 90 s by default): no scheduled run starts. Start one:
`tradeflow up`, or `prefect worker start --pool {pool}` in the project folder. (Once per outage: the next notice
needs a worker to come back and go again.)
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

        # the URL is a secret entry, substituted into the URL template when sending: the Blocks page shows
        # "{{url}}" and the secret masked
        return CustomWebhookNotificationBlock(
            name=BLOCK_NAME, url="{{url}}", method="POST", secrets={"url": url},
            json_data={"text": "{{subject}}\n\n{{body}}", "subject": "{{subject}}", "body": "{{body}}"})
    scheme = url.split(":", 1)[0] if ":" in url else "(none)"
    raise AlertConfigError(f"TRADEFLOW_ALERT_URL: scheme {scheme!r} is neither an Apprise URL "
                           "(https://github.com/caronc/apprise/wiki) nor an http(s) webhook")


def target_kind(url: str) -> str:
    """What kind of target `url` is, without its secret parts: 'webhook (https)' or 'Apprise (json)'.

    Raises:
        AlertConfigError: see `notification_block`.
    """
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block = notification_block(url)
    scheme = url.split(":", 1)[0].lower()
    return f"webhook ({scheme})" if isinstance(block, CustomWebhookNotificationBlock) else f"Apprise ({scheme})"


@dataclass(frozen=True)
class AlertTimes:
    """The timing settings of the automations (see the module docstring).

    Attributes:
        late_seconds: deployment name -> seconds after its scheduled time a run not started notifies (>= 25).
        window_seconds: the throttle window of skipped and concurrency-cancelled runs, seconds.
        no_worker_seconds: the pool without a ready worker this long (from its not-ready mark) notifies, seconds.
        late_run_max_minutes: TRADEFLOW_LATE_RUN_MAX_MINUTES, quoted in the late message.
        work_pool: the pool whose workers are watched.
    """

    late_seconds: Mapping[str, float]
    window_seconds: float = 3600.0
    no_worker_seconds: float = 120.0
    late_run_max_minutes: float = 3.0
    work_pool: str = "tradeflow"

    @classmethod
    def from_settings(cls, settings: Any, deployments: Any, work_pool: str = "tradeflow") -> "AlertTimes":
        from core.settings import late_alert_seconds_for

        return cls(late_seconds={d: late_alert_seconds_for(settings, d) for d in deployments},
                   window_seconds=settings.alert_window_seconds, no_worker_seconds=settings.no_worker_alert_seconds,
                   late_run_max_minutes=settings.late_run_max_minutes, work_pool=work_pool)


def _window(seconds: float) -> str:
    return f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds / 60:g} min"


@dataclass
class AlertsResult:
    """What `ensure_alerts` did: the block document id and automation ids (None when no URL is set)."""

    block_id: str | None
    automation_ids: dict[str, str]


def automations(deployment_ids: Mapping[str, str], block_id: Any, times: AlertTimes,
                work_pool_id: str | None = None) -> list[Any]:
    """The automations (Prefect `AutomationCore`) that watch every run of `deployment_ids` (name -> id) as one:
    failed or crashed (one per run), skipped late and cancelled behind a running one (one per deployment and
    window), and, with `work_pool_id`, no worker in the pool."""
    from prefect.automations import AutomationCore, EventTrigger, Posture, SendNotification

    related = {"prefect.resource.role": "deployment",
               "prefect.resource.id": [f"prefect.deployment.{i}" for i in deployment_ids.values()]}
    run = {"prefect.resource.id": "prefect.flow-run.*"}
    notify = SendNotification(block_document_id=block_id, subject=SUBJECT, body=BODY)
    throttled = SendNotification(block_document_id=block_id, subject=SUBJECT,
                                 body=BODY + THROTTLED.format(window=_window(times.window_seconds)))
    per_deployment = {"related:deployment:prefect.resource.id"}
    names = ", ".join(sorted(deployment_ids))
    out = [
        AutomationCore(
            name=FAILED_AUTOMATION,
            description=f"Notify {BLOCK_NAME} when a run of {names} ends Failed, TimedOut or Crashed.",
            trigger=EventTrigger(
                expect={"prefect.flow-run.Failed", "prefect.flow-run.TimedOut", "prefect.flow-run.Crashed"},
                match=run, match_related=related, for_each={"prefect.resource.id"}, posture=Posture.Reactive,
                threshold=1),
            actions=[notify]),
        AutomationCore(
            name=SKIPPED_AUTOMATION,
            description=f"Notify {BLOCK_NAME} when a run of {names} ends SkippedLate, once per deployment "
                        f"within {_window(times.window_seconds)}.",
            trigger=EventTrigger(
                expect={"prefect.flow-run.SkippedLate"}, match=run, match_related=related,
                for_each=per_deployment, posture=Posture.Reactive, threshold=1, within=times.window_seconds),
            actions=[throttled]),
        AutomationCore(
            name=STUCK_AUTOMATION,
            description=f"Notify {BLOCK_NAME} when a run of {names} is cancelled because the previous run of its "
                        "deployment is still running (concurrency limit 1, CANCEL_NEW), once per deployment "
                        f"within {_window(times.window_seconds)}.",
            trigger=EventTrigger(
                expect={"prefect.flow-run.Cancelled"},
                match={**run, "prefect.state-message": CONCURRENCY_MESSAGE},
                match_related=related, for_each=per_deployment, posture=Posture.Reactive, threshold=1,
                within=times.window_seconds),
            actions=[throttled]),
    ]
    if work_pool_id is not None:
        out.append(AutomationCore(
            name=NO_WORKER_AUTOMATION,
            description=f"Notify {BLOCK_NAME} once when the work pool {times.work_pool} has had no ready worker for "
                        f"{times.no_worker_seconds:g} s (from the server's not-ready mark, without a ready one).",
            trigger=EventTrigger(
                after={"prefect.work-pool.not-ready"}, expect={"prefect.work-pool.ready"},
                match={"prefect.resource.id": f"prefect.work-pool.{work_pool_id}"},
                for_each={"prefect.resource.id"}, posture=Posture.Proactive, threshold=1,
                within=times.no_worker_seconds),
            actions=[SendNotification(
                block_document_id=block_id, subject=NO_WORKER_SUBJECT.format(pool=times.work_pool),
                body=NO_WORKER_BODY.format(pool=times.work_pool, seconds=times.no_worker_seconds))]))
    return out


def late_automation(deployment: str, deployment_id: str, block_id: Any, times: AlertTimes,
                    late_id: Any = None) -> Any:
    """The runs-late automation of one deployment (Proactive, one bucket per deployment: a Late run and no run of
    the deployment taken within the rest of its late seconds). Its notification pauses it (`late_id`, once
    created, is given): one message per outage; `rearm_after_outage`, called by the deployment's next run,
    rewrites it enabled and says the runs are picked up again.

    Why not a second automation that resumes it on the next Pending run: a resumed automation keeps its trigger
    id, so a bucket a Late mark opened between the firing and the pause being applied (the actions run after the
    firing, and the server marks a backlog Late in batches) is still there, expired, and fires at once on resume.
    A rewrite (PUT) gives the trigger a new id, which no bucket has. (Also, Prefect 3.8's client sends an update
    with `exclude_unset`, so a ResumeAutomation whose `type` was left at its default arrives as a pause.)"""
    from prefect.automations import AutomationCore, EventTrigger, Posture, SendNotification
    from prefect.events.actions import PauseAutomation

    seconds = times.late_seconds[deployment]
    related = {"prefect.resource.role": "deployment", "prefect.resource.id": f"prefect.deployment.{deployment_id}"}
    fmt = dict(deployment=deployment, seconds=seconds, pool=times.work_pool,
               late_minutes=times.late_run_max_minutes)
    return AutomationCore(
        name=LATE_AUTOMATION.format(deployment=deployment),
        description=f"Notify {BLOCK_NAME} once when runs of {deployment} are not started {seconds:g} s after "
                    "their scheduled time; paused until its next run starts.",
        trigger=EventTrigger(
            after={"prefect.flow-run.Late"}, expect=TAKEN_EVENTS,
            match={"prefect.resource.id": "prefect.flow-run.*"}, match_related=related,
            for_each={"related:deployment:prefect.resource.id"}, posture=Posture.Proactive,
            threshold=1, within=max(seconds - SERVER_LATE_AFTER_SECONDS, 10.0)),
        actions=[SendNotification(block_document_id=block_id, subject=LATE_SUBJECT.format(**fmt),
                                  body=LATE_BODY.format(**fmt)),
                 *([PauseAutomation(source="selected", automation_id=late_id)] if late_id else [])])


def rearm_after_outage(deployment: str, client: Any) -> bool:
    """Called when a run of `deployment` starts (`client`: a synchronous Prefect client): a worker is taking
    runs. When its runs-late automation is paused (it notified), re-arm it and send one "runs are being picked
    up again" notification through the block. True when it did. Runs of one deployment run one at a time (concurrency limit 1), so one run sees the pause."""
    late = _rearm(client, LATE_AUTOMATION.format(deployment=deployment))
    if late:
        load_block().notify(subject=RESUMED_SUBJECT.format(deployment=deployment),
                            body=RESUMED_BODY.format(deployment=deployment), _sync=True)
    return late


def _rearm(client: Any, name: str) -> bool:
    """Enable the paused automation `name`; False when it is missing or enabled. Rewritten, not only resumed:
    the server gives the rewritten trigger a new id, so a bucket opened while its notification was being sent
    (the server marks a backlog Late in batches) cannot fire on resume."""
    from prefect.automations import AutomationCore

    found = client.read_automations_by_name(name)
    if not found or found[0].enabled:
        return False
    automation = found[0]
    keep = ("name", "description", "trigger", "actions", "actions_on_trigger", "actions_on_resolve")
    client.update_automation(automation.id, AutomationCore(**{k: getattr(automation, k) for k in keep}, enabled=True))
    return True


async def save_block(url: str, client: Any) -> Any:
    """Save `url`'s notification block as `tradeflow-alerts` and delete a block of the other type by that name
    (left by an earlier TRADEFLOW_ALERT_URL of the other kind), so that `load_block` (the daily report) and the
    automations send to the same, current target. Returns the block document id.

    Raises:
        AlertConfigError: see `notification_block`.
    """
    from prefect.blocks.notifications import CustomWebhookNotificationBlock, SlackWebhook
    from prefect.exceptions import ObjectNotFound

    block = notification_block(url)
    block_id = await block.asave(BLOCK_NAME, overwrite=True, client=client)
    for cls in (SlackWebhook, CustomWebhookNotificationBlock):
        if isinstance(block, cls):
            continue
        try:
            stale = await client.read_block_document_by_name(BLOCK_NAME, cls.get_block_type_slug())
        except ObjectNotFound:
            continue
        await client.delete_block_document(stale.id)
    return block_id


def load_block() -> Any:
    """The saved `tradeflow-alerts` block (whichever of the two block types `notification_block` made).

    Raises:
        LookupError: no such block on the server (`tradeflow deploy` with TRADEFLOW_ALERT_URL makes it).
    """
    from prefect.blocks.notifications import CustomWebhookNotificationBlock, SlackWebhook

    for cls in (SlackWebhook, CustomWebhookNotificationBlock):
        try:
            return cls.load(BLOCK_NAME, _sync=True)
        except Exception:  # noqa: BLE001 - ObjectNotFound / wrong type: try the next
            continue
    raise LookupError(f"no notification block {BLOCK_NAME!r} on the Prefect server: run ./run deploy with "
                      "TRADEFLOW_ALERT_URL set")


async def _upsert(client: Any, automation: Any) -> str:
    """Create `automation`, or update the one of its name (deleting duplicates); its id."""
    existing = await client.read_automations_by_name(automation.name)
    if not existing:
        return str(await client.create_automation(automation))
    await client.update_automation(existing[0].id, automation)
    for extra in existing[1:]:
        await client.delete_automation(extra.id)
    return str(existing[0].id)


async def _delete_named(client: Any, names: Any) -> None:
    for name in names:
        for a in await client.read_automations_by_name(name):
            await client.delete_automation(a.id)


async def ensure_alerts(url: str | None, deployment_ids: Mapping[str, str], client: Any,
                        times: AlertTimes | None = None) -> AlertsResult:
    """Create or update the notification block and the automations; with no `url`, delete them (a notification
    nobody receives is not an alert). Updating puts every late automation back to armed.

    Args:
        url: the secret TRADEFLOW_ALERT_URL value (None: not set).
        deployment_ids: name -> deployment id (`deployments.deploy.apply`).
        client: a Prefect client.
        times: the timings (default: from the settings).

    Raises:
        AlertConfigError: see `notification_block`.
    """
    from prefect.exceptions import ObjectNotFound

    if times is None:
        from core.settings import get_settings

        times = AlertTimes.from_settings(get_settings(), deployment_ids)
    pair_names = [LATE_AUTOMATION.format(deployment=d) for d in deployment_ids]
    await _delete_named(client, OLD_AUTOMATIONS)
    if not url:
        await _delete_named(client, [FAILED_AUTOMATION, SKIPPED_AUTOMATION, STUCK_AUTOMATION, NO_WORKER_AUTOMATION,
                                     *pair_names])
        return AlertsResult(None, {})
    block_id = await save_block(url, client)
    try:
        pool_id = str((await client.read_work_pool(times.work_pool)).id)
    except ObjectNotFound:
        pool_id = None
    ids: dict[str, str] = {}
    for automation in automations(deployment_ids, block_id, times, pool_id):
        ids[automation.name] = await _upsert(client, automation)
    for name, deployment_id in deployment_ids.items():
        if name not in times.late_seconds:
            continue
        late_id = await _upsert(client, late_automation(name, deployment_id, block_id, times))
        await _upsert(client, late_automation(name, deployment_id, block_id, times, late_id))
        await client.resume_automation(late_id)
        ids[LATE_AUTOMATION.format(deployment=name)] = late_id
    return AlertsResult(str(block_id), ids)
