"""The deployments (from the registry, `core.registry`): what they are (entrypoint, parameters, schedules, concurrency), `prefect.yaml`, and
applying them to a Prefect server (`tradeflow deploy`).

Where they run: a Prefect *process* work pool, `tradeflow` (`WORK_POOL`), each deployment on a work queue of its
own named after it (so the queue's late-run count is the deployment's, which the late alert quotes). `tradeflow deploy` registers the
deployments with their entrypoint strings only (nothing is imported: the flows' parameter schemas are read from
their source files), and a process worker (`prefect worker start --pool tradeflow`, started by `tradeflow up`)
runs each flow run as a separate process in the project folder, where it imports the flow by its entrypoint. The
same deployments then run unchanged on a worker of another machine or another pool type (DESIGN.md, beyond one
machine).

Concurrency (Prefect 3.8 deployment concurrency, checked by the server when a run moves to Pending): each
deployment has `concurrency_limit: 1` with collision strategy `CANCEL_NEW`. A run that starts while the previous
run of the same deployment is still going is cancelled at once (state Cancelled, message "Deployment concurrency
limit reached.") instead of waiting behind it: with `ENQUEUE` a stuck 15:55 entry would hold every later run,
which would all start late, one after another, once it ends. Order flows refuse late runs anyway
(`run.refuse_if_late`); a cancelled run is never late. An alert automation reports such cancellations
(`deployments.alerts`). The slot of a run whose process dies is freed when its lease expires (the server's
`PREFECT_SERVER_CONCURRENCY_INITIAL_DEPLOYMENT_LEASE_DURATION`, 300 s).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.calendar import NY
from core.settings import PROJECT_ROOT, Settings
from deployments.schedules import ScheduleSpec, Window, all_schedules, window_for

WORK_POOL = "tradeflow"
"""The Prefect process work pool the deployments run on."""



def __getattr__(name: str):
    """`ENTRYPOINTS` (name -> `path:function`), `DESCRIPTIONS` (name -> text) and `ORDER_FLOWS` (the names of
    those that send orders) of the deployments that run, read from the registry (`core.registry`)."""
    from core.registry import enabled_deployments

    if name == "ENTRYPOINTS":
        return {d.name: d.entrypoint for d in enabled_deployments()}
    if name == "DESCRIPTIONS":
        return {d.name: d.description for d in enabled_deployments()}
    if name == "ORDER_FLOWS":
        return frozenset(d.name for d in enabled_deployments() if d.sends_orders)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class MissingFlowError(RuntimeError):
    """A deployment's flow file does not exist; the message names the entrypoint."""


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment as `tradeflow deploy` registers it.

    Attributes:
        name: the deployment name, which is also the flow name (`prefect deployment run NAME/NAME`).
        entrypoint: `path/to/file.py:function`, relative to the project folder.
        description: shown in the UI.
        schedules: calendar-generated RRule schedules (America/New_York).
        parameters: default parameters; empty: `as_of` defaults to the run's scheduled start, every other
            parameter to the settings.
        tags: UI tags.
        concurrency_limit, collision_strategy: see the module docstring.
    """

    name: str
    entrypoint: str
    description: str
    schedules: tuple[ScheduleSpec, ...]
    parameters: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ("tradeflow",)
    concurrency_limit: int = 1
    collision_strategy: str = "CANCEL_NEW"

    @property
    def full_name(self) -> str:
        """`flow-name/deployment-name`, as `prefect deployment run` takes it."""
        return f"{self.name}/{self.name}"

    def flow_file(self, project_dir: Path = PROJECT_ROOT) -> Path:
        return project_dir / self.entrypoint.split(":", 1)[0]


def build_specs(settings: Settings, today: dt.date, entrypoints: dict[str, str] | None = None,
                deployments: Sequence[str] | None = None) -> tuple[Window, list[DeploymentSpec]]:
    """The deployments for the generation window of `today` (New York date), from their registry entries.

    Args:
        settings: for the entry minute (ema_entry_minutes_before_close) and which strategies run
            (TRADEFLOW_STRATEGIES).
        today: the date whose month starts the window (`deployments.schedules.window_for`).
        entrypoints: override of the entries' entrypoints (tests).
        deployments: which deployments (default: those that run, `core.registry.enabled_names(settings)`).

    Raises:
        deployments.schedules.ScheduleError: a schedule would not reproduce the calendar.
        ValueError: an unknown deployment or strategy.
    """
    from core.registry import default_registry, enabled_names

    names = tuple(deployments) if deployments is not None else enabled_names(settings)
    window = window_for(today)
    schedules = all_schedules(window, settings.ema_entry_minutes_before_close, names)
    entries = [default_registry().deployment(d) for d in names]
    eps = {**{e.name: e.entrypoint for e in entries}, **(entrypoints or {})}
    specs = [DeploymentSpec(name=e.name, entrypoint=eps[e.name], description=e.description,
                            schedules=tuple(schedules[e.name]), parameters=dict(e.parameters), tags=e.all_tags)
             for e in entries]
    return window, specs


# --- prefect.yaml ---------------------------------------------------------------------------------------------

YAML_HEADER = """\
# Prefect project file of tradeflow: the seven deployments. GENERATED by `tradeflow deploy` (do not edit: the
# next `tradeflow deploy` rewrites it). Schedules are generated from the NYSE calendar (core/calendar.py) for the
# window below and checked against `tradeflow schedule` before they are written; see deployments/schedules.py
# for the representation and why it stays valid (`tradeflow up` regenerates it every evening, `tradeflow deploy`
# from cron otherwise). Deployments run on the process work pool `{pool}` (`tradeflow up` starts its worker).
# `tradeflow deploy` applies these definitions through the Prefect API, without importing the flows (the pull
# step's working directory is then the project folder it runs in).
# window: {start} .. {end}
"""


def prefect_yaml(specs: Sequence[DeploymentSpec], window: Window, active: bool = True) -> str:
    """The text of prefect.yaml for `specs` (schedules `active` or registered but off)."""
    import yaml

    doc = {
        "name": "tradeflow",
        "prefect-version": _prefect_version(),
        "build": None,
        "push": None,
        "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $PWD }}"}}],
        "deployments": [
            {
                "name": s.name,
                "description": s.description,
                "entrypoint": s.entrypoint,
                "parameters": dict(s.parameters),
                "tags": list(s.tags),
                "work_pool": {"name": WORK_POOL, "work_queue_name": s.name, "job_variables": {}},
                "concurrency_limit": {"limit": s.concurrency_limit, "collision_strategy": s.collision_strategy},
                "schedules": [sch.to_yaml(active) for sch in s.schedules],
            }
            for s in specs
        ],
    }

    class _Dumper(yaml.SafeDumper):
        pass

    def _str(dumper: yaml.SafeDumper, value: str):
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _str)
    body = yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=120, default_flow_style=False)
    return YAML_HEADER.format(pool=WORK_POOL, start=window.start, end=window.end) + body


def _prefect_version() -> str:
    import prefect

    return prefect.__version__


def read_yaml_window(text: str) -> Window:
    """The window a generated prefect.yaml states in its header.

    Raises:
        ValueError: the text has no `# window:` line.
    """
    for line in text.splitlines():
        if line.startswith("# window:"):
            start, end = (p.strip() for p in line.removeprefix("# window:").split(".."))
            return Window(dt.date.fromisoformat(start), dt.date.fromisoformat(end))
    raise ValueError("prefect.yaml has no '# window:' line: it was not generated by `tradeflow deploy`")


# --- applying to a Prefect server -----------------------------------------------------------------------------

@dataclass
class ApplyResult:
    """What `apply` did: deployment ids by name, which were created/updated/unchanged, which flow files are
    missing (registered anyway: their runs crash, and the alert says so, until the files exist)."""

    ids: dict[str, str] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    missing_flows: list[str] = field(default_factory=list)


def _pull_steps(project_dir: Path) -> list[dict[str, Any]]:
    return [{"prefect.deployments.steps.set_working_directory": {"directory": str(project_dir)}}]


def _schema(spec: DeploymentSpec, project_dir: Path) -> dict[str, Any] | None:
    """The flow's parameter schema, read from its source file without importing it, or by importing it when
    the function is not defined there by name (re-exported, made by a factory); None when the file is missing.

    Raises:
        MissingFlowError: the file exists but has no such flow.
    """
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema, parameter_schema_from_entrypoint

    path = spec.flow_file(project_dir)
    if not path.is_file():
        return None
    entrypoint = f"{path}:{spec.entrypoint.split(':', 1)[1]}"
    try:
        return parameter_schema_from_entrypoint(entrypoint).model_dump()
    except ValueError:
        pass
    try:
        return parameter_schema(load_flow_from_entrypoint(entrypoint, use_placeholder_flow=False).fn).model_dump()
    except Exception as exc:  # noqa: BLE001 - any import error: say which flow
        raise MissingFlowError(f"{spec.name}: cannot load {spec.entrypoint}: {type(exc).__name__}: {exc}") from exc


def _no_empty(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """None for a missing schema or the empty one the server stores in its place."""
    return schema if schema and schema.get("properties") else None


def _current(existing: Any) -> dict[str, Any]:
    """The fields `apply` manages, as the server holds them."""
    options = existing.concurrency_options
    limit = existing.global_concurrency_limit.limit if existing.global_concurrency_limit else None
    return {
        "entrypoint": existing.entrypoint,
        "description": existing.description,
        "parameters": existing.parameters,
        "tags": sorted(existing.tags),
        "work_pool_name": existing.work_pool_name,
        "work_queue_name": existing.work_queue_name,
        "pull_steps": existing.pull_steps,
        "concurrency_limit": limit,
        "collision_strategy": options.collision_strategy.value if options else None,
        "parameter_openapi_schema": _no_empty(existing.parameter_openapi_schema),
        "schedules": sorted((s.slug, s.schedule.rrule, s.schedule.timezone, s.active)
                            for s in existing.schedules if hasattr(s.schedule, "rrule")),
        "other_schedules": len([s for s in existing.schedules if not hasattr(s.schedule, "rrule")]),
    }


def _desired(spec: DeploymentSpec, project_dir: Path, active: bool, schema: dict[str, Any] | None,
             work_pool: str) -> dict[str, Any]:
    return {
        "entrypoint": spec.entrypoint,
        "description": spec.description,
        "parameters": dict(spec.parameters),
        "tags": sorted(spec.tags),
        "work_pool_name": work_pool,
        "work_queue_name": spec.name,
        "pull_steps": _pull_steps(project_dir),
        "concurrency_limit": spec.concurrency_limit,
        "collision_strategy": spec.collision_strategy,
        "parameter_openapi_schema": _no_empty(schema),
        "schedules": sorted((s.slug, s.rrule, s.timezone, active) for s in spec.schedules),
        "other_schedules": 0,
    }


async def ensure_work_pool(client: Any, name: str = WORK_POOL) -> None:
    """Create the process work pool `name` unless it exists."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    try:
        await client.read_work_pool(name)
    except ObjectNotFound:
        await client.create_work_pool(WorkPoolCreate(
            name=name, type="process", description="tradeflow: each flow run as a process in the project folder",
            base_job_template=ProcessWorker.get_default_base_job_template()))


async def apply(specs: Sequence[DeploymentSpec], *, active: bool = True, project_dir: Path = PROJECT_ROOT,
                client: Any = None, work_pool: str = WORK_POOL) -> ApplyResult:
    """Create or update `specs` on the Prefect API the client talks to (default: PREFECT_API_URL). A deployment
    whose managed fields already match is left alone (Prefect deletes a deployment's unstarted runs on every
    update); one that changed is updated and its runs are scheduled again at once.

    Args:
        active: whether the schedules fire (False registers them switched off).
        project_dir: the folder holding the flows (the working directory of flow runs).
        work_pool: the process work pool (created when missing).

    Raises:
        prefect.exceptions.PrefectHTTPStatusError, httpx.HTTPError: the API refused or is unreachable.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import ConcurrencyLimitStrategy, ConcurrencyOptions
    from prefect.exceptions import ObjectNotFound

    if client is None:
        async with get_client() as c:
            return await apply(specs, active=active, project_dir=project_dir, client=c, work_pool=work_pool)
    result = ApplyResult()
    await ensure_work_pool(client, work_pool)
    for spec in specs:
        schema = _schema(spec, project_dir)
        if schema is None:
            result.missing_flows.append(spec.entrypoint)
        want = _desired(spec, project_dir, active, schema, work_pool)
        try:
            existing = await client.read_deployment_by_name(spec.full_name)
        except ObjectNotFound:
            existing = None
        if existing is not None and _current(existing) == want:
            result.ids[spec.name] = str(existing.id)
            result.unchanged.append(spec.name)
            continue
        flow_id = await client.create_flow_from_name(spec.name)
        deployment_id = await client.create_deployment(
            flow_id=flow_id, name=spec.name, description=spec.description, entrypoint=spec.entrypoint,
            parameters=dict(spec.parameters), tags=list(spec.tags), work_pool_name=work_pool,
            work_queue_name=spec.name,
            pull_steps=_pull_steps(project_dir), path=str(project_dir),
            schedules=[s.to_prefect(active) for s in spec.schedules],
            concurrency_limit=spec.concurrency_limit,
            concurrency_options=ConcurrencyOptions(
                collision_strategy=ConcurrencyLimitStrategy(spec.collision_strategy)),
            parameter_openapi_schema=schema, enforce_parameter_schema=schema is not None,
        )
        # recreate the runs the update deleted now, not at the scheduler's next loop
        response = await client._client.post(f"/deployments/{deployment_id}/schedule", json={})
        response.raise_for_status()
        result.ids[spec.name] = str(deployment_id)
        result.changed.append(spec.name)
    return result


def schedule_ends(deployment: Any) -> dt.date | None:
    """The date after which a deployed deployment stops firing (New York): the earliest, over its schedules, of
    each schedule's last date (its RRULE's UNTIL, or its last RDATE); None without schedules."""
    ends: list[dt.date] = []
    for s in deployment.schedules:
        lines = getattr(s.schedule, "rrule", "").splitlines()
        dates = [part[6:14] for line in lines if line.startswith("RRULE:")
                 for part in line.removeprefix("RRULE:").split(";") if part.startswith("UNTIL=")]
        dates += [v[:8] for line in lines if line.startswith("RDATE:") for v in line.removeprefix("RDATE:").split(",")]
        if dates:
            ends.append(dt.datetime.strptime(max(dates), "%Y%m%d").date())
    return min(ends) if ends else None


async def deployed_ends(names: Sequence[str] | None = None) -> dict[str, dt.date | None]:
    """`schedule_ends` of each deployed deployment (None when it is not deployed or has no schedule); default:
    the deployments that run (`core.registry.enabled_names`)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from core.registry import enabled_names

    names = names if names is not None else enabled_names()
    out: dict[str, dt.date | None] = {}
    async with get_client() as client:
        for name in names:
            try:
                out[name] = schedule_ends(await client.read_deployment_by_name(f"{name}/{name}"))
            except ObjectNotFound:
                out[name] = None
    return out


def today_ny(now: dt.datetime | None = None) -> dt.date:
    """The New York date of `now` (default: the wall clock; deployment generation is the one place that reads it,
    to pick the window)."""
    return (now or dt.datetime.now(dt.timezone.utc)).astimezone(NY).date()


def run(coro):
    """Run a coroutine from synchronous code (the commands, the tests) on a loop of its own. Unlike
    `asyncio.run` it leaves the thread without a current event loop untouched: ib_insync, used later in the same
    thread (a replay, a test), takes the thread's current loop and fails once `asyncio.run` has cleared it."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()
