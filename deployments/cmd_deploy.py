"""`tradeflow deploy`: regenerate the schedules from the calendar, write prefect.yaml, apply the deployments and
the alert automations to the Prefect server.

Which server: PREFECT_API_URL when set, else the local server `tradeflow up` runs (127.0.0.1, Prefect's
PREFECT_SERVER_API_PORT, 4200 by default) when it answers.

Schedules on or off (`--schedules`, default `auto`): on, except when the configured broker is this project's
paper exchange (`deployments.paper.paper_exchange_configured`): its clock replays past sessions, so runs fired
by the wall clock would decide on prices of another day. Ad hoc runs (`prefect deployment run`) work either way.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

CHECK_DAYS = 60


def register_deploy(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deploy", help="regenerate the calendar schedules and apply the deployments and alerts",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--schedules", choices=("auto", "on", "off"), default="auto",
                   help="whether the schedules fire (auto: off when the broker is the paper exchange)")
    p.add_argument("--write-only", action="store_true", help="only write prefect.yaml; apply nothing")
    p.add_argument("--check", action="store_true",
                   help=f"apply nothing; exit 1 when a deployed schedule ends within {CHECK_DAYS} days")
    p.set_defaults(handler=_deploy)


def api_url() -> str | None:
    """The Prefect API to use: PREFECT_API_URL, else the local server when it answers, else None."""
    from prefect.settings import get_current_settings

    from deployments.processes import api_healthy

    s = get_current_settings()
    if s.api.url:
        return str(s.api.url)
    local = f"http://127.0.0.1:{s.server.api.port}/api"
    return local if api_healthy(local) else None


def write_prefect_yaml(path: Path, text: str) -> bool:
    """Write prefect.yaml when its text changes (the window moves with the month); True when written."""
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    return True


def deploy_all(settings: Any, *, active: bool, api: str, today: dt.date | None = None,
               out=sys.stdout) -> tuple[Any, Any]:
    """Regenerate, write prefect.yaml, apply the deployments and the alerts to `api`; print what was done.

    Returns:
        (deployments.deploy.ApplyResult, deployments.alerts.AlertsResult)

    Raises:
        deployments.schedules.ScheduleError, deployments.alerts.AlertConfigError, httpx.HTTPError.
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from core.settings import PROJECT_ROOT
    from deployments.alerts import ensure_alerts
    from deployments.failover import ensure_failover
    from deployments.deploy import apply, build_specs, prefect_yaml, run, today_ny

    window, specs = build_specs(settings, today or today_ny())
    write_prefect_yaml(PROJECT_ROOT / "prefect.yaml", prefect_yaml(specs, window, active=True))

    async def go():
        async with get_client() as client:
            result = await apply(specs, active=active, client=client)
            secret = settings.alert_url.get_secret_value() if settings.alert_url else None
            alerts = await ensure_alerts(secret, result.ids, client)
            await ensure_failover(client)
            return result, alerts

    with temporary_settings({PREFECT_API_URL: api}):
        result, alerts = run(go())
    print(f"deployments on {api} (window {window.start} .. {window.end}, schedules "
          f"{'on' if active else 'off'}):", file=out)
    for spec in specs:
        state = "updated" if spec.name in result.changed else "unchanged"
        print(f"  {spec.full_name:<32} {len(spec.schedules)} schedule(s), {state}", file=out)
    for entrypoint in result.missing_flows:
        print(f"  MISSING flow file: {entrypoint} (registered; its runs fail until the file exists)", file=out)
    if alerts.block_id:
        print(f"  alerts: automations {', '.join(sorted(alerts.automation_ids))} -> block tradeflow-alerts",
              file=out)
    else:
        print("  alerts: TRADEFLOW_ALERT_URL is not set: failed runs notify nobody (see README, Alerts)", file=out)
    return result, alerts


def _deploy(args: argparse.Namespace) -> int:
    from core.settings import get_settings
    from deployments.alerts import AlertConfigError
    from deployments.deploy import MissingFlowError, build_specs, deployed_ends, prefect_yaml, run, today_ny
    from deployments.paper import paper_exchange_configured
    from deployments.schedules import ScheduleError

    settings = get_settings()
    if args.write_only:
        from core.settings import PROJECT_ROOT

        window, specs = build_specs(settings, today_ny())
        written = write_prefect_yaml(PROJECT_ROOT / "prefect.yaml", prefect_yaml(specs, window))
        print(f"{'wrote' if written else 'up to date:'} {PROJECT_ROOT / 'prefect.yaml'} "
              f"(window {window.start} .. {window.end})")
        return 0
    api = api_url()
    if api is None:
        print("tradeflow deploy: no Prefect server: set PREFECT_API_URL, or start one with `tradeflow up`",
              file=sys.stderr)
        return 1
    if args.check:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: api}):
            ends = run(deployed_ends())
        limit = today_ny() + dt.timedelta(days=CHECK_DAYS)
        bad = {k: v for k, v in ends.items() if v is None or v < limit}
        for name, end in ends.items():
            print(f"{name:<16} schedules end {end or 'never deployed'}")
        if bad:
            print(f"tradeflow deploy --check: {', '.join(bad)} end before {limit}: run `tradeflow deploy`",
                  file=sys.stderr)
            return 1
        return 0
    active = {"on": True, "off": False}.get(args.schedules)
    if active is None:
        active = not paper_exchange_configured(settings)
    try:
        result, _ = deploy_all(settings, active=active, api=api)
    except (ScheduleError, AlertConfigError, MissingFlowError) as exc:
        print(f"tradeflow deploy: {exc}", file=sys.stderr)
        return 2
    return 1 if result.missing_flows else 0
