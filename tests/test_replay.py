"""`tradeflow replay` walks sessions on the paper exchange's clock and runs each scheduled event's flow as a
subflow of one replay run, with that event's as_of (stand-in flows until the real ones are merged)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from core.calendar import NY, session_events, session_on
from core.journal import Journal
from core.settings import get_settings
from deployments.deploy import run
from deployments.replay import get_replay_flow, plan_startup_replay
from tests.replay_flows import ENTRYPOINTS

DAY = dt.date(2026, 3, 3)  # the session after the exchange fixture's clock (2026-03-02 10:00)


@pytest.fixture
def admin_port(exchange, monkeypatch):  # noqa: F811
    monkeypatch.setenv("TRADEFLOW_PAPER_ADMIN_PORT", str(exchange.admin_port))
    return exchange.admin_port


@pytest.mark.prefect_server
def test_replay_runs_every_event_as_a_subflow_at_its_time(exchange, admin_port, prefect_api):  # noqa: F811
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    state = get_replay_flow()(DAY, DAY, 6, ENTRYPOINTS, False, return_state=True)
    assert state.is_completed(), state.message
    expected = [e for e in session_events(session_on(DAY))]
    mtf = [e for e in expected if e.deployment == "mtf-signal"][::6]
    expected = sorted([e for e in expected if e.deployment != "mtf-signal"] + mtf)

    journal = Journal(get_settings().journal_path)
    done = journal.query("SELECT deployment, as_of, details FROM flow_events WHERE event = 'completed' "
                         "AND deployment <> 'replay' ORDER BY as_of, deployment")
    assert [(r.deployment, r.as_of.astimezone(NY)) for r in done.itertuples()] == \
        [(e.deployment, e.time) for e in expected]
    # the exchange's clock stood at each event's time when its flow asked; for ema-update, at the time the day's
    # bar counts as final (it waits on the broker's clock for that)
    settle = dt.timedelta(seconds=get_settings().ema_close_settle_seconds)
    assert all(json.loads(r.details)["broker_clock"] == (r.as_of.astimezone(NY) + (
        settle if r.deployment == "ema-update" else dt.timedelta(0))).isoformat() for r in done.itertuples())
    replay = journal.query("SELECT event, details FROM flow_events WHERE deployment = 'replay'")
    assert list(replay["event"]) == ["started", "completed"]
    assert json.loads(replay["details"][1])["from"] == DAY.isoformat()

    async def children():
        async with get_client() as client:
            return await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[state.state_details.flow_run_id])), limit=200)

    runs = run(children())
    assert len(runs) == len(expected) and all(r.state.is_completed() for r in runs)
    assert {r.name for r in runs} >= {"ema-entry 2026-03-03 15:55", "equity-snapshot 2026-03-03 09:30"}


@pytest.mark.prefect_server
def test_replay_refuses_to_move_the_clock_back_and_names_missing_flows(exchange, admin_port,  # noqa: F811
                                                                      prefect_api):
    state = get_replay_flow()(dt.date(2026, 2, 27), dt.date(2026, 2, 27), 1, ENTRYPOINTS, False, return_state=True)
    assert state.is_failed() and "never goes back" in state.message
    broken = {**ENTRYPOINTS, "ema-entry": "flows/not_there.py:ema_entry"}
    state = get_replay_flow()(DAY, DAY, 1, broken, False, return_state=True)
    assert state.is_failed() and "flow ema-entry is missing: flows/not_there.py" in state.message


def test_startup_plan_picks_the_most_recent_complete_sessions(state_dir):
    plan = plan_startup_replay(get_settings(), 2)
    if plan is None:
        pytest.skip("no 5-minute bars")
    assert [s.date for s in plan.sessions] == [dt.date(2026, 3, 5), dt.date(2026, 3, 6)]  # SMH's last full days
    assert not plan.already_done and plan.clock_start == dt.datetime(2026, 3, 5, 9, 25, tzinfo=NY)
    with pytest.raises(ValueError):
        plan_startup_replay(get_settings(), 0)


def test_paper_clock_reads_and_moves_the_exchange_clock_forward_only(exchange, admin_port, capsys):  # noqa: F811
    from deployments.cli import main

    assert main(["paper-clock", "--set", "2026-03-02T11:00:00-05:00"]) == 0
    assert exchange.clock.now_dt() == dt.datetime(2026, 3, 2, 11, 0, tzinfo=NY)
    assert main(["paper-clock"]) == 0 and "2026-03-02T11:00:00-05:00" in capsys.readouterr().out
    assert main(["paper-clock", "--set", "2026-03-02T10:30:00-05:00"]) == 1
    assert "never goes backwards" in capsys.readouterr().err
