"""What the Prefect UI says: a run's name and its Logs tab, and the kill switch.

- **Logs.** Prefect sends only its own loggers to the API; the project logs through the standard `logging`
  module (`core.*`, `tasks.*`, `flows.*`, `models.*`, `deployments.*`), so `send_project_logs_to_prefect()`
  gives those loggers a handler that forwards their INFO and higher lines to the run they are logged in (the
  Logs tab), and nothing outside a run. It is called when a flow run opens (`tasks.runtime.flow_run`), so a
  worker's process, `tradeflow replay`, an ad hoc run and a test all send the same lines, with nothing to set in
  the environment. (`PREFECT_LOGGING_EXTRA_LOGGERS` alone would not do: it adds the handler but leaves the
  loggers at the root's WARNING level, so the INFO lines that tell the story would be dropped.) Every line
  passes through `redact`: the settings' secret values (the alert URL) never leave the process.
- **The kill switch** (`sync_kill_switch`): the Prefect Variable `tradeflow_kill_switch` (UI: Variables)
  holds "HALTED by ... at ...: reason" or "trading allowed", with the state directory; `tradeflow halt` /
  `resume` set it, and every flow run sets it from the halt file when it starts, so it follows the file even
  when the file was written by hand.
- **The morning status** (`publish_status`): `tradeflow status` as the markdown artifact `status`, for the
  09:00 pre-open check to publish.
- **Names.** `run_name(deployment)` names a run `<deployment> <YYYY-MM-DD HH:MM>` in New York time, from its
  `as_of` parameter or, without one, its scheduled start: the Runs list reads like the schedule.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from pathlib import Path

from core.calendar import NY

PROJECT_LOGGERS = ("core", "models", "tasks", "flows", "deployments", "tradeflow")
"""Top-level packages whose loggers reach the run's Logs tab."""

_SECRETS: set[str] = set()


def redact(text: str) -> str:
    """`text` with every known secret value (the settings' SecretStr values) replaced by `***`."""
    for secret in _SECRETS:
        text = text.replace(secret, "***")
    return text


def remember_secrets(settings) -> None:
    """Note the secret values of `settings` (pydantic SecretStr fields) so that `redact` masks them."""
    from pydantic import SecretStr

    for name in type(settings).model_fields:
        value = getattr(settings, name, None)
        if isinstance(value, SecretStr) and value.get_secret_value():
            _SECRETS.add(value.get_secret_value())


def _make_handler() -> logging.Handler:
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.logging.handlers import APILogHandler

    class RunLogHandler(APILogHandler):
        """Prefect's API log handler, for lines logged inside a flow or task run only, secrets masked."""

        def emit(self, record: logging.LogRecord) -> None:
            if FlowRunContext.get() is None and TaskRunContext.get() is None:
                return  # a command outside any run: its console is where it is read
            if _SECRETS:
                record.msg, record.args = redact(record.getMessage()), None
            super().emit(record)

    handler = RunLogHandler(level=logging.INFO)
    handler.set_name("tradeflow-run-logs")
    return handler


def send_project_logs_to_prefect(settings=None) -> None:
    """Forward the project's INFO+ log lines to the Prefect run they are logged in (idempotent: once per
    process). `settings`: whose secrets to mask (default: none besides those noted before)."""
    if settings is not None:
        remember_secrets(settings)
    handler = None
    for name in PROJECT_LOGGERS:
        logger = logging.getLogger(name)
        if any(h.get_name() == "tradeflow-run-logs" for h in logger.handlers):
            continue
        handler = handler or _make_handler()
        logger.addHandler(handler)
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)


def name_for(deployment: str, when: dt.datetime) -> str:
    """`<deployment> <YYYY-MM-DD HH:MM>`, `when` shown in New York time (aware datetime)."""
    return f"{deployment} {when.astimezone(NY):%Y-%m-%d %H:%M}"


def run_name(deployment: str) -> Callable[[], str]:
    """A `flow_run_name` callable: the run's `as_of` parameter (aware datetime or ISO string) or, without
    one, its scheduled start, as `name_for` shows it; the deployment name alone when neither is readable. On a
    worker host of several (`tradeflow up --role worker` sets TRADEFLOW_WORKER_NAME), ' on HOST' follows, so the
    UI's run list shows which host ran each run (the name is given again when a run fails over to another host)."""

    def name() -> str:
        host = os.environ.get("TRADEFLOW_WORKER_NAME")
        return plain() + (f" on {host}" if host else "")

    def plain() -> str:
        from prefect.runtime import flow_run as current

        when = (current.parameters or {}).get("as_of")
        if isinstance(when, str):
            try:
                when = dt.datetime.fromisoformat(when)
            except ValueError:
                when = None
        if not isinstance(when, dt.datetime) or when.tzinfo is None:
            when = current.scheduled_start_time
        if not isinstance(when, dt.datetime):
            return deployment
        return name_for(deployment, when)

    return name


KILL_SWITCH_VARIABLE = "tradeflow_kill_switch"
"""The Prefect Variable that mirrors the halt file (UI: Variables)."""


def kill_switch_text(halt, state_dir) -> str:
    """The Variable's value: 'HALTED: <describe()> (state dir ...)' or 'trading allowed (state dir ...)'."""
    return (f"HALTED: {halt.describe()}" if halt is not None else "trading allowed") + f" (state dir {state_dir})"


def sync_kill_switch(switch, state_dir) -> str | None:
    """Set the Variable `KILL_SWITCH_VARIABLE` from `switch.current()` (a core.controls.KillSwitch) when it
    differs. Returns the text set, or None when the Prefect API could not be reached (logged; never raises:
    the halt file, not the Variable, is what stops orders)."""
    from prefect.variables import Variable

    text = kill_switch_text(switch.current(), state_dir)
    try:
        if Variable.get(KILL_SWITCH_VARIABLE) != text:
            Variable.set(KILL_SWITCH_VARIABLE, text, overwrite=True)
    except Exception as exc:  # noqa: BLE001 - the UI's copy must never stop a command or a flow
        logging.getLogger(__name__).warning("could not show the kill switch in the Prefect UI: %s", exc)
        return None
    return text


def publish_chart(run, key: str, title: str, sentence: str, png: bytes, filename: str) -> Path:
    """A chart artifact of the run (`key`): `title`, one `sentence` saying what it shows, the PNG inline; the
    same PNG written to `<state dir>/reports/<filename>`. Returns the file's path. Outside a flow run only the
    file is written."""
    from prefect.runtime import flow_run as current

    from core.charts import png_markdown

    reports = run.settings.state_dir / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    path = reports / filename
    path.write_bytes(png)
    if current.id is not None:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown=f"### {title}\n\n{sentence}\n\n{png_markdown(png, title)}\n\n"
                                          f"File: `{path}`\n", key=key, description=title)
    return path


def ema_chart_or_none(run) -> bytes | None:
    """The EMA chart (core.charts.ema_chart) of the run's journal, also written to
    `<state dir>/reports/ema-<session>.png`; None (logged) when it cannot be drawn: a chart never fails a run."""
    from core.charts import ema_chart

    try:
        png = ema_chart(run.journal, run.settings)
    except Exception as exc:  # noqa: BLE001 - the decision and the journal matter, not the picture
        logging.getLogger(__name__).warning("no EMA chart: %s", exc)
        return None
    reports = run.settings.state_dir / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    (reports / f"ema-{run.as_of.astimezone(NY):%Y-%m-%d}.png").write_bytes(png)
    return png


def publish_charts(run, day) -> None:
    """Reconciliation's chart artifacts for session `day`: `reconciliation-equity-curve` (equity and drawdown,
    each strategy's cumulative net P&L) and `mtf-session` (the session's P(up) per symbol with entries and
    exits). A chart that cannot be drawn is logged and left out."""
    from core.charts import equity_chart, mtf_chart

    log = logging.getLogger(__name__)
    try:
        png = equity_chart(run.journal, day)
        publish_chart(run, "reconciliation-equity-curve", f"Equity and drawdown to {day}",
                      "The account's NetLiquidation at each snapshot (the day's start, its end) with its drawdown "
                      "from the running peak, and each strategy's net P&L after commissions (per session while there "
                      "are few, else cumulative).", png, f"equity-{day}.png")
    except ValueError as exc:
        log.warning("no equity chart: %s", exc)
    try:
        png = mtf_chart(run.journal, run.settings, day)
        publish_chart(run, "mtf-session", f"MTF P(up) on {day}",
                      f"Each symbol's P(up) at every mtf-signal run against the entry ({run.settings.mtf_entry_threshold:g})"
                      f" and exit ({run.settings.mtf_exit_threshold:g}) thresholds; triangles mark fills.", png,
                      f"mtf-{day}.png")
    except ValueError as exc:
        log.warning("no MTF chart: %s", exc)


def publish_retrain_chart(run, outcome, window: str) -> None:
    """The retrain's chart artifact of one symbol (`retrain-<symbol>-chart`): champion against challenger on the
    evaluation window (ROC and calibration; core.charts.retrain_chart_png), the promotion decision first. A chart
    that cannot be drawn is logged and left out."""
    from core.charts import retrain_chart_png

    champion = (outcome.champion.version, (outcome.champion_eval or {}).get("curve")) if outcome.champion else None
    try:
        png = retrain_chart_png(outcome.symbol, window, (outcome.challenger.version,
                                                         outcome.challenger_eval.get("curve")), champion)
    except ValueError as exc:
        logging.getLogger(__name__).warning("no retrain chart: %s", exc)
        return
    verdict = "promoted" if outcome.promoted else "not promoted"
    publish_chart(run, f"retrain-{outcome.symbol.lower()}-chart", f"{outcome.symbol} champion against challenger "
                  f"on {window}", f"Challenger {outcome.challenger.version} {verdict}: {outcome.reason}", png,
                  f"retrain-{outcome.symbol}-{window.replace(':', '-')}.png")


def worker_summary(api_url: str | None, timeout: float = 3.0) -> str | None:
    """A sentence on the `tradeflow` work pool's workers from the Prefect API at `api_url` (…/api): how many
    are online and when the last one was seen; None when no API answers."""
    from deployments.deploy import WORK_POOL, run
    from deployments.processes import api_healthy

    if not api_url or not api_healthy(api_url, timeout):
        return None

    async def read():
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            try:
                pool = await client.read_work_pool(WORK_POOL)
            except Exception:  # noqa: BLE001 - ObjectNotFound: no deployment was ever made here
                return None, []
            return pool, await client.read_workers_for_work_pool(WORK_POOL)

    pool, workers = run(read())
    if pool is None:
        return f"no work pool '{WORK_POOL}' on {api_url}: run `tradeflow deploy` (or `tradeflow up`)"
    online = [w for w in workers if str(getattr(w.status, "value", w.status)).upper() == "ONLINE"]
    seen = max((w.last_heartbeat_time for w in workers if w.last_heartbeat_time), default=None)
    when = f", last heartbeat {seen.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC" if seen else ""
    if online:
        return f"READY: {len(online)} worker(s) online in work pool '{WORK_POOL}'{when}"
    return f"NOT READY: no worker online in work pool '{WORK_POOL}'{when}; start one (`tradeflow up`)"


def publish_status(run) -> str:
    """The pre-open check's morning artifact (key `status`): `tradeflow status` at the run's `as_of`, as
    markdown (core/status.py). Returns the markdown. The 09:00 preflight flow calls this (one line) once it
    exists."""
    from prefect.settings import get_current_settings

    from core.status import build_status, render

    api = str(get_current_settings().api.url or "") or None
    markdown = render(build_status(run.journal, run.settings, run.as_of, worker=worker_summary(api)), markdown=True)
    from prefect.runtime import flow_run as current

    if current.id is not None:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown=markdown, key="status", description=f"status {run.as_of.isoformat()}")
    return markdown
