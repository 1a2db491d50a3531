"""What every flow does the same way: its `as_of`, its journal record, its broker, lateness, its artifact.

A flow uses it like this (see `flows/`):

    @flow(name="ema-entry")
    def ema_entry(as_of: datetime | None = None):
        with flow_run("ema-entry", as_of) as run:          # resolves as_of, journals started/completed/failed
            with run.broker() as broker:                   # IBBroker, a client id of its own per deployment
                late = run.refuse_if_late(broker, run.settings.late_run_max_minutes)
                if late is not None:
                    return late                            # a Completed state named "SkippedLate"
                gateway = run.gateway(broker)              # the one order path (core.orders)
                ...
            run.publish(markdown)                          # the run's artifact in the Prefect UI

`as_of` (DESIGN.md): a flow's `as_of` defaults to its run's scheduled start time, so a retry in the UI or a
`prefect deployment run` with the same `as_of` repeats the same decision instead of a new one.

Lateness is measured on the broker's clock (`Broker.current_time`): against TWS that is the wall clock; in a
replay it is the paper exchange's clock, so a replayed 15:55 run is on time while a real one started at 16:10
(a worker back after downtime, a retry clicked later) is late.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from prefect.states import Completed, State

from core.broker import BrokerConnectionError, BrokerTimeoutError
from core.calendar import NY, Session, session_for
from core.controls import KillSwitch
from core.heartbeat import ping
from core.ib_broker import IBBroker
from core.journal import Journal, JournalError
from core.orders import JournalBehindError, OrderGateway
from core.settings import Settings, get_settings
from tasks.ui import send_project_logs_to_prefect, sync_kill_switch

log = logging.getLogger(__name__)



def client_id_offset(connection: str) -> int:
    """The client-id offset of a deployment (its registry entry, `core.registry`) or of the `replay` and
    `operator` connections: client id = IBKR_CLIENT_ID + offset, so that flows overlapping at 15:55-16:00 never
    share an id (IB error 326); IBBroker still moves to the next id when one is taken."""
    from core.registry import default_registry

    return default_registry().client_id_offset(connection)

LATE_STATE_NAME = "SkippedLate"
"""Name of the Completed state a flow ends in when it started too late to act (`FlowRun.skip`; the skipped-late
alert automation matches it)."""


def _run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger (its lines reach the run's Logs tab) inside a run, else this module's logger."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return log


def resolve_as_of(as_of: dt.datetime | str | None) -> dt.datetime:
    """The run's decision time, aware, America/New_York: `as_of` when given (an aware datetime or ISO string),
    else the flow run's scheduled start time (Prefect runtime), else, outside any run, an error.

    Raises:
        ValueError: `as_of` is naive or unparseable, or None outside a Prefect flow run.
    """
    if as_of is None:
        from prefect.runtime import flow_run as current

        if current.id is None:
            raise ValueError("as_of is required outside a Prefect flow run (give an aware datetime)")
        as_of = current.scheduled_start_time
    if isinstance(as_of, str):
        try:
            as_of = dt.datetime.fromisoformat(as_of)
        except ValueError:
            raise ValueError(f"as_of {as_of!r} is not an ISO 8601 date-time") from None
    if as_of.tzinfo is None:
        raise ValueError(f"as_of {as_of.isoformat()} has no timezone: give one (e.g. -05:00 for New York)")
    return dt.datetime.fromtimestamp(as_of.timestamp(), NY)


def current_run_id() -> str:
    """The Prefect flow run id, or 'local-<uuid>' when the code runs outside a flow run."""
    from prefect.runtime import flow_run as current

    return str(current.id) if current.id else f"local-{uuid.uuid4()}"


@dataclass
class FlowRun:
    """One flow run's context: deployment name, `as_of`, session, run id, settings and journal."""

    deployment: str
    as_of: dt.datetime
    run_id: str
    settings: Settings
    journal: Journal
    session: Session | None
    outcome: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None
    gateways: list[OrderGateway] = field(default_factory=list)

    @property
    def kill_switch(self) -> KillSwitch:
        return KillSwitch(self.settings.state_dir)

    @contextmanager
    def broker(self) -> Iterator[IBBroker]:
        """A connected IBBroker with this deployment's client id (IBKR_CLIENT_ID + `client_id_offset`);
        disconnected on exit. Raises BrokerConnectionError naming host and port."""
        broker = IBBroker(client_id=self.settings.ibkr_client_id + client_id_offset(self.deployment),
                          settings=self.settings)
        with broker:
            yield broker

    def gateway(self, broker: IBBroker) -> OrderGateway:
        """The order path of this run (kill switch, breaks, journal first; see core.orders): one per broker
        connection, so that what it sent and the journal writes it keeps are known when the run ends."""
        for g in self.gateways:
            if g.broker is broker:
                return g
        g = OrderGateway(broker=broker, journal=self.journal, kill_switch=self.kill_switch, run_id=self.run_id)
        self.gateways.append(g)
        return g

    def journal_behind(self, failure: BaseException | None = None) -> str | None:
        """None when every journal write this run's gateways kept could now be written; else the
        JournalBehindError message (first line: what was sent and what protects it)."""
        behind = [g for g in self.gateways if not g.flush_kept()]
        return "\n".join(g.behind_message(failure) for g in behind) if behind else None

    def skip(self, reason: str) -> State:
        """End the run without acting: journal 'skipped' with `reason`, log it (the run's Logs tab), return a
        Completed state named `SkippedLate` for the flow to return.

        Completed, not Cancelled: the run did its job (refusing to trade late) and a returned Cancelled state
        makes Prefect log "Engine execution exited with unexpected exception" and a CancelledRun traceback,
        which reads as a crash. The name still tells it: the UI shows the state name, the event is
        `prefect.flow-run.SkippedLate` (the skipped-late alert matches it), and `flow_events` says 'skipped'."""
        self.skipped = reason
        with self.journal.transaction() as tx:
            tx.record_flow_event(self.run_id, "skipped", self.deployment, self.as_of, outcome=reason)
        _run_logger().warning("%s %s skipped, nothing done: %s", self.deployment, self.as_of.isoformat(), reason)
        self.publish(f"### {self.deployment} skipped\n\n`as_of` {self.as_of.isoformat()}\n\n{reason}\n")
        return Completed(name=LATE_STATE_NAME, message=f"skipped: {reason}")

    def refuse_if_late(self, broker: IBBroker, max_minutes: float) -> State | None:
        """A `SkippedLate` state when the broker's clock is more than `max_minutes` past `as_of`, else None."""
        now = broker.current_time()
        late = (now - self.as_of).total_seconds() / 60.0
        if late > max_minutes:
            return self.skip(f"started {late:.1f} minutes after its scheduled time {self.as_of.isoformat()} "
                             f"(broker clock {now.isoformat()}); runs later than {max_minutes:g} minutes do not "
                             f"trade")
        return None

    def publish(self, markdown: str, table: list[dict[str, Any]] | None = None) -> None:
        """The run's artifact in the Prefect UI (keyed by deployment, so the UI shows its history). Outside a
        flow run it only logs."""
        from prefect.runtime import flow_run as current

        if current.id is None:
            log.info("%s", markdown)
            return
        from prefect.artifacts import create_markdown_artifact, create_table_artifact

        key = self.deployment.replace("_", "-")
        create_markdown_artifact(markdown=markdown, key=key, description=f"{self.deployment} {self.as_of.isoformat()}")
        if table:
            create_table_artifact(table=table, key=f"{key}-table", description=f"{self.deployment} details")


@contextmanager
def flow_run(deployment: str, as_of: dt.datetime | str | None, settings: Settings | None = None) -> Iterator[FlowRun]:
    """Open a flow run's context: resolve `as_of`, journal 'started', and on exit 'completed' (with
    `run.outcome`) or, when an exception escapes, 'failed' with the error (then re-raise it). Either end pings
    TRADEFLOW_HEARTBEAT_URL when set (a failure at URL/fail; `core.heartbeat`).

    Raises:
        core.orders.JournalBehindError: on exit, when the run's gateways still keep journal writes they could
            not make after sending orders (the journal is held or the disk full): its first line says what was
            sent and what is held with or without its stop (the alert's first line), whether the run's body
            completed or failed."""
    settings = settings or get_settings()
    send_project_logs_to_prefect(settings)
    when = resolve_as_of(as_of)
    run = FlowRun(deployment=deployment, as_of=when, run_id=current_run_id(), settings=settings,
                  journal=Journal(settings.journal_path, lock_timeout=settings.journal_lock_timeout_seconds),
                  session=session_for(when))
    _rearm_late_alert(deployment)  # first: a worker took this run, whatever the journal then does
    with run.journal.transaction() as tx:
        tx.record_flow_event(run.run_id, "started", deployment, when)
    log.info("%s for %s", deployment, describe_when(when, run.session))
    if not run.run_id.startswith("local-"):  # a Prefect run: its UI shows the kill switch as the file says
        shown = sync_kill_switch(run.kill_switch, settings.state_dir)
        if shown and shown.startswith("HALTED"):
            log.warning("%s: orders will be refused", shown)
    try:
        yield run
    except BaseException as exc:
        log.error("%s failed: %s: %s", deployment, type(exc).__name__, exc)
        behind = run.journal_behind(exc)
        if behind is not None:  # orders went out and the journal lacks some of it: say so first, above all else
            log.critical("%s", behind)
            _heartbeat(settings, failed=True)
            raise JournalBehindError(behind) from exc
        try:
            with run.journal.transaction() as tx:
                tx.record_flow_event(run.run_id, "failed", deployment, when, outcome=f"{type(exc).__name__}: {exc}",
                                     details=run.details or None)
        except Exception:  # noqa: BLE001 - the original error matters more than the failure to journal it
            log.exception("could not journal the failure of %s", deployment)
        if not isinstance(exc, RETRYABLE):
            _no_more_retries(exc)
        _heartbeat(settings, failed=True)
        raise
    behind = run.journal_behind()
    if behind is not None:
        log.critical("%s", behind)
        _heartbeat(settings, failed=True)
        raise JournalBehindError(behind)
    if run.skipped is None:
        with run.journal.transaction() as tx:
            tx.record_flow_event(run.run_id, "completed", deployment, when, outcome=run.outcome or None,
                                 details=run.details or None)
        log.info("%s done: %s", deployment, run.outcome or "completed")
    _heartbeat(settings, failed=False)


RETRYABLE = (BrokerConnectionError, BrokerTimeoutError, JournalError, TimeoutError)
"""Failures a flow's retries (`tasks.run_policy`) are for: the broker unreachable or slow (a gateway restart),
the journal held by another process. Any other failure (a decision: a position break, a red preflight item,
half-known state) ends the run at once, whatever retries remain."""


def _no_more_retries(exc: BaseException) -> None:
    """Set this flow run's retries to those already used, so the server's retry rule lets the coming Failed
    state stand (Prefect 3.8 flows have no retry condition). Logs, never raises."""
    from prefect.runtime import flow_run as current

    if current.id is None:
        return
    try:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.objects import FlowRunPolicy

        with get_client(sync_client=True) as client:
            fr = client.read_flow_run(current.id)
            if not fr.empirical_policy.retries:
                return
            policy = fr.empirical_policy.model_copy(update={"retries": max(fr.run_count - 1, 0)})
            client.update_flow_run(current.id, empirical_policy=FlowRunPolicy.model_validate(policy.model_dump()))
        log.info("%s is not retried: a retry is for a broker or journal failure", type(exc).__name__)
    except Exception as err:  # noqa: BLE001
        log.warning("could not stop the retries of this run: %s", type(err).__name__)


def _rearm_late_alert(deployment: str) -> None:
    """In a deployment run: the runs-late alert of `deployment`, paused since it notified, is re-armed and says
    the runs are picked up again (`deployments.alerts.rearm_after_outage`). Never fails the run."""
    from prefect.runtime import deployment as current_deployment

    if current_deployment.id is None:
        return
    try:
        from prefect.client.orchestration import get_client

        from deployments.alerts import rearm_after_outage

        with get_client(sync_client=True) as client:
            rearm_after_outage(deployment, client)
    except Exception as exc:  # noqa: BLE001 - an alert's bookkeeping must not stop a trading run
        log.warning("could not re-arm the late-run alert of %s: %s", deployment, type(exc).__name__)


def _heartbeat(settings: Settings, failed: bool) -> None:
    """The dead-man's switch (`core.heartbeat`): a ping when TRADEFLOW_HEARTBEAT_URL is set (never raises)."""
    if settings.heartbeat_url is not None:
        ping(settings.heartbeat_url.get_secret_value(), failed=failed)


def describe_when(when: dt.datetime, session: Session | None) -> str:
    """`as_of` for a person: '2026-03-06 15:55 New York, session 2026-03-06 (09:30-16:00)' (early close and no
    session said as such)."""
    at = f"{when.astimezone(NY):%Y-%m-%d %H:%M} New York"
    if session is None:
        return f"{at} (no NYSE session that day)"
    early = ", early close" if session.early_close else ""
    return f"{at}, session {session.date} ({session.open:%H:%M}-{session.close:%H:%M}{early})"
