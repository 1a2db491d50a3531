"""A session with IB Gateway's daily restart in the middle of it: the paper exchange restarts at 11:45 New York
(every connection dropped, the API port closed for 10 minutes, the account kept), and the real flows run at
their times around it (real Prefect flow runs, the production IBBroker, a real DuckDB journal).

- mtf-signal 11:40 completes (AAPL's champion says P(up) 0.9: it buys); the runs at 11:45 and 11:50 fail with a
  message naming the daily restart (their failure is what the failure automation alerts on); 11:55 completes by
  itself and sends nothing again (AAPL is held);
- 0 duplicate orders at the exchange; the evening reconciliation finds no break.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, time

import pytest
from prefect.states import StateType

from core.calendar import NY
from core.journal import Journal
from core.paper_exchange import AdminClient
from core.settings import get_settings
from flows.reconciliation import reconciliation
from tests.broker_support import wait_until
from tests.fault_workers import flow_of
from tests.mtf_support import model_templates, models  # noqa: F401


def at(hh: int, mm: int) -> datetime:
    return datetime(2026, 3, 2, hh, mm, tzinfo=NY)


def test_a_session_across_the_daily_restart_at_1145(exchange, prefect_harness, monkeypatch, models):  # noqa: F811
    models.champion("AAPL", 0.9)
    models.champion("TSLA", 0.1)
    monkeypatch.setenv("TRADEFLOW_GATEWAY_RESTART_TIME", "11:45")
    get_settings.cache_clear()
    exchange.gateway.restart_time, exchange.gateway.restart_seconds = time(11, 45), 600
    admin = AdminClient(exchange.admin_port)
    mtf = flow_of("mtf-signal")
    outcomes = {}
    for hh, mm in ((11, 40), (11, 45), (11, 50), (11, 55)):
        admin.set_clock(at(hh, mm))
        if (hh, mm) == (11, 55):  # the port reopens on the exchange's next tick
            wait_until(lambda: admin.status()["gateway"]["up"], 5, "the gateway back up")
        outcomes[(hh, mm)] = mtf(as_of=at(hh, mm), return_state=True)
    assert outcomes[(11, 40)].type == StateType.COMPLETED
    for when in ((11, 45), (11, 50)):
        s = outcomes[when]
        assert s.type == StateType.FAILED, s
        assert "BrokerConnectionError" in s.message and "restarts daily at 11:45 New York" in s.message, s.message
    assert outcomes[(11, 55)].type == StateType.COMPLETED
    done = outcomes[(11, 55)].result()
    aapl = next(r for r in done["decisions"] if r["symbol"] == "AAPL")
    assert aapl["decision"] == "HOLD"
    assert admin.status()["gateway"]["restarts"] == 1

    refs = Counter(o.order_ref for o in exchange.engine.orders.values())
    assert refs and max(refs.values()) == 1  # no order sent twice
    assert [o.order_ref for o in exchange.engine.orders.values() if o.action == "BUY"] == [
        "mtf-AAPL-20260302T1140-entry"]

    j = Journal(get_settings().journal_path)
    failed = j.query("SELECT as_of, outcome FROM flow_events WHERE event = 'failed' ORDER BY as_of")
    assert [t.astimezone(NY).strftime("%H:%M") for t in failed["as_of"]] == ["11:45", "11:50"]
    assert all("restarts daily at 11:45 New York" in o for o in failed["outcome"])

    admin.set_clock(at(17, 0))
    summary = reconciliation(as_of=at(17, 0))
    assert summary["breaks"] == []
    assert j.query("SELECT count(*) AS n FROM executions")["n"][0] == 1


@pytest.fixture(autouse=True)
def _restart_time_setting_cleared():
    yield
    get_settings.cache_clear()
