"""The deployments' schedules come from the NYSE calendar: generated strings reproduce `event_times` exactly, the
committed prefect.yaml is what the generator writes, and a real Prefect server holds exactly the calendar's runs
for the next 60 days (none on a holiday)."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
import yaml

from core.calendar import DEPLOYMENTS, NY, event_times, session_on
from core.settings import PROJECT_ROOT, get_settings
from deployments.deploy import (ENTRYPOINTS, WORK_POOL, apply, build_specs, prefect_yaml, read_yaml_window,
                                run)
from deployments.schedules import (RRULE_MAX_CHARS, ScheduleError, ScheduleSpec, Window, deployment_schedules,
                                   schedule_times, verify, window_for)


def _times(specs, window: Window) -> list[dt.datetime]:
    return sorted(t for s in specs for t in schedule_times(s, window.first, window.last))


@pytest.mark.parametrize("today", ["2026-11-21", "2024-12-15", "2027-02-10"])
def test_every_deployment_fires_exactly_on_the_calendar(today):
    # 2026-11: Thanksgiving and its early close; 2024-12 window: the 2025-01-09 closure and Christmas Eve;
    # every window crosses both DST changes
    window = window_for(dt.date.fromisoformat(today))
    for name in DEPLOYMENTS:
        specs = deployment_schedules(name, window)
        assert all(len(s.rrule) <= RRULE_MAX_CHARS for s in specs)
        assert _times(specs, window) == [e.time for e in event_times(window.start, window.end, name)]


def test_early_closes_move_the_close_relative_runs_and_holidays_have_none():
    window = window_for(dt.date(2026, 11, 1))
    day = dt.date(2026, 11, 27)  # the day after Thanksgiving closes at 13:00
    times = {name: _times(deployment_schedules(name, window), window) for name in DEPLOYMENTS}
    on = lambda name, d: [t.strftime("%H:%M") for t in times[name] if t.date() == d]  # noqa: E731
    assert on("ema-entry", day) == ["12:55"] and on("ema-update", day) == ["13:00"]
    mtf = on("mtf-signal", day)
    assert (mtf[0], mtf[-1], len(mtf)) == ("09:35", "13:00", 42)
    assert len(on("mtf-signal", dt.date(2026, 11, 30))) == 78
    assert all(on(name, dt.date(2026, 11, 26)) == [] for name in DEPLOYMENTS)  # Thanksgiving
    assert on("retrain", dt.date(2026, 11, 30)) == ["18:00"]


def test_a_schedule_that_differs_from_the_calendar_is_refused():
    window = window_for(dt.date(2026, 11, 1))
    spec = deployment_schedules("ema-entry", window)[0]
    lines = [line for line in spec.rrule.splitlines() if not line.startswith("EXDATE:")]  # holidays back in
    with pytest.raises(ScheduleError, match="ema-entry.*extra"):
        verify("ema-entry", [ScheduleSpec(spec.slug, "\n".join(lines))], window)
    utc = spec.rrule.replace("EXDATE:20261126T155500", "EXDATE:20261126T205500Z")  # UTC: silently excludes nothing
    with pytest.raises(ScheduleError):
        verify("ema-entry", [ScheduleSpec(spec.slug, utc)], window)


def test_the_five_minute_deployment_is_split_by_hour_to_fit_what_prefect_evaluates():
    specs = deployment_schedules("mtf-signal", window_for(dt.date(2026, 11, 1)))
    assert [s.slug for s in specs] == [f"mtf-signal-{h:02d}h" for h in range(9, 17)]


def test_the_committed_prefect_yaml_is_the_generator_output_for_its_window():
    text = (PROJECT_ROOT / "prefect.yaml").read_text()
    window = read_yaml_window(text)
    _, specs = build_specs(get_settings(), window.start)
    assert text == prefect_yaml(specs, window)
    doc = yaml.safe_load(text)
    assert {d["name"]: d["entrypoint"] for d in doc["deployments"]} == ENTRYPOINTS
    for d in doc["deployments"]:
        assert d["work_pool"]["name"] == WORK_POOL
        assert d["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
        specs = [ScheduleSpec(s["slug"], s["rrule"], s["timezone"]) for s in d["schedules"]]
        verify(d["name"], specs, window)


# --- against a real Prefect server ------------------------------------------------------------------------------

async def _scheduled(deployment_id: str, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, FlowRunFilter,
                                                FlowRunFilterExpectedStartTime, FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType

    out: list[dt.datetime] = []
    async with get_client() as client:
        while True:
            page = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                flow_run_filter=FlowRunFilter(
                    expected_start_time=FlowRunFilterExpectedStartTime(after_=start, before_=end),
                    state=dict(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
                limit=200, offset=len(out))
            out += [r.expected_start_time.astimezone(NY) for r in page]
            if len(page) < 200:
                return sorted(out)


@pytest.mark.prefect_server
def test_the_server_holds_exactly_the_calendar_runs_for_the_next_60_days(prefect_api, tmp_path: Path):
    now = dt.datetime.now(NY)
    window, specs = build_specs(get_settings(), now.date())
    # the flows' bodies are not needed: deployments are registered by entrypoint, without importing them
    result = run(apply(specs, active=True, project_dir=tmp_path))
    assert sorted(result.ids) == sorted(DEPLOYMENTS) and sorted(result.changed) == sorted(DEPLOYMENTS)
    assert sorted(result.missing_flows) == sorted(ENTRYPOINTS.values())
    again = run(apply(specs, active=True, project_dir=tmp_path))
    assert sorted(again.unchanged) == sorted(DEPLOYMENTS)  # unchanged: not updated, runs kept

    start = dt.datetime.now(NY) + dt.timedelta(seconds=30)
    end = start + dt.timedelta(days=60)
    expected = {name: [e.time for e in event_times(start.date(), end.date(), name) if start <= e.time <= end]
                for name in DEPLOYMENTS}
    held: dict[str, list[dt.datetime]] = {}
    deadline = time.monotonic() + 120
    while True:
        held = {name: run(_scheduled(result.ids[name], start, end)) for name in DEPLOYMENTS}
        if held == expected or time.monotonic() > deadline:
            break
        time.sleep(1)  # polling the scheduler's progress (a condition wait)
    for name in DEPLOYMENTS:
        got, want = held[name], expected[name]
        assert got == want, (f"{name}: server holds {len(got)} runs, the calendar has {len(want)}; missing "
                             f"{sorted(set(want) - set(got))[:3]}, extra {sorted(set(got) - set(want))[:3]}")
        assert all(session_on(t.date()) is not None for t in got), f"{name} has a run on a non-session day"
    assert len(held["mtf-signal"]) > 30 * 42  # about two months of 5-minute runs, not a few hours
