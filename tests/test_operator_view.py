"""The operator's view after a replayed session (2026-03-06, the real flows on the paper exchange, a real Prefect
server with its UI): every run is named `<deployment> <YYYY-MM-DD HH:MM>` and tells in its Logs tab what it
observed, decided and sent; `tradeflow status` agrees with the journal section by section; the artifacts carry
their charts; a real browser (headless Chromium) shows the ema-entry run's name and its decision and order, and
an artifact's chart as an image that loaded (its screenshots go to TRADEFLOW_SCREENSHOTS_DIR when set).

One replay serves the module (several minutes: both MTF models are trained first, retrain with its walk-forward
evaluation runs at the end):
every 13th mtf-signal event runs (6 of 78), the others as scheduled.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.calendar import DEPLOYMENTS, NY
from core.journal import Journal
from core.settings import get_settings
from deployments.deploy import run as run_async

DAY = dt.date(2026, 3, 6)
SECRET = "json://127.0.0.1:9/i16-secret-token"
AFTER = dt.datetime(2026, 3, 6, 18, 30, tzinfo=NY)  # after the session's last run (retrain at 18:00)

pytestmark = [pytest.mark.prefect_server, pytest.mark.needs_data,
              pytest.mark.timeout(1800)]  # the first test pays for the replay (about 3 minutes on 2 cores)


@dataclass
class Replayed:
    """The replayed session: the Prefect server (with UI), the replay's flow run id, its child runs, the state
    directory."""

    server: object
    replay_id: object
    runs: list
    state_dir: Path

    @property
    def journal(self) -> Journal:
        return Journal(self.state_dir / "journal.duckdb")


def _read(coro_fn):
    async def go():
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            return await coro_fn(client)

    return run_async(go())


def logs_of(run_id) -> list:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    return _read(lambda c: c.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
                                       limit=200))


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replayed]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from core.paper_exchange import PaperExchange
    from deployments.processes import LocalServer, free_port
    from deployments.replay import get_replay_flow
    from tests.broker_support import require_data

    data = require_data()
    root = tmp_path_factory.mktemp("operator-view")
    state = root / "state"
    home = root / "prefect-home"
    server = LocalServer(home, free_port(), home / "server.log", ui=True)
    server.start()
    ex = PaperExchange(data, start=dt.datetime(2026, 3, 6, 8, 55, tzinfo=NY),  # before preflight at 09:00
                       state_file=root / "paper-exchange.json").start()
    try:
        with pytest.MonkeyPatch.context() as mp, temporary_settings({PREFECT_API_URL: server.api_url}):
            for name, value in {"TRADEFLOW_STATE_DIR": str(state), "IBKR_HOST": "127.0.0.1",
                                "IBKR_PORT": str(ex.port), "TRADEFLOW_PAPER_ADMIN_PORT": str(ex.admin_port),
                                "TRADEFLOW_DATA_DIR": str(data), "PREFECT_API_URL": server.api_url,
                                "TRADEFLOW_ALERT_URL": SECRET}.items():
                mp.setenv(name, value)
            get_settings.cache_clear()
            state_ = get_replay_flow()(DAY, DAY, 13, None, True, True, return_state=True)
            assert state_.is_completed(), state_.message
            APILogWorker.drain_all(timeout=30)
            replay_id = state_.state_details.flow_run_id
            runs = _read(lambda c: c.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[replay_id])), limit=200))
            yield Replayed(server, replay_id, runs, state)
    finally:
        get_settings.cache_clear()
        APILogWorker.drain_all(timeout=30)  # lines still queued reach this server before it stops
        ex.stop()
        server.stop()


# --- names and logs --------------------------------------------------------------------------------------------

def test_every_run_is_named_by_deployment_and_new_york_time(replayed):
    names = {r.name for r in replayed.runs}
    assert {"equity-snapshot 2026-03-06 09:30", "ema-entry 2026-03-06 15:55", "ema-update 2026-03-06 16:00",
            "reconciliation 2026-03-06 17:00", "mtf-signal 2026-03-06 09:35", "retrain 2026-03-06 18:00"} <= names
    assert all(re.fullmatch(r"[a-z-]+ 2026-03-06 \d\d:\d\d", n) for n in names), names
    replay = _read(lambda c: c.read_flow_run(replayed.replay_id))
    assert replay.name == "replay 2026-03-06 .. 2026-03-06"


def test_every_flow_of_the_session_logs_in_operator_words_and_no_secret(replayed):
    by_deployment: dict[str, list[str]] = {}
    for r in replayed.runs:
        project = [log.message for log in logs_of(r.id) if not log.name.startswith("prefect")]
        assert project, f"{r.name}: no project log line in its Logs tab"
        by_deployment.setdefault(r.name.rsplit(" ", 2)[0], []).extend(project)
        assert not any("i16-secret-token" in m for m in project), r.name
    assert set(by_deployment) == set(DEPLOYMENTS)
    entry = "\n".join(by_deployment["ema-entry"])
    # what it observed, decided and why, each order sent and its acknowledgement, each fill
    assert re.search(r"observed: SMH \d+\.\d\d USD, VIX \d+\.\d\d .* NetLiquidation [\d,.]+ USD", entry), entry
    assert re.search(r"decided \(ema, signal BULL\): BUY \d+ SMH: BULL and flat", entry), entry
    assert re.search(r"sending BUY \d+ SMH MKT DAY \(ema entry\), orderRef ema-SMH-20260306-entry", entry), entry
    assert re.search(r"fill \S+: BUY \d+ SMH at \d+\.\d+ USD, orderRef ema-SMH-20260306-entry", entry), entry
    assert re.search(r"sending SELL \d+ SMH STP stop \d+\.\d\d GTC \(ema entry-stop\)", entry), entry
    assert re.search(r"order ema-SMH-20260306-entry-stop acknowledged: Submitted \(order id \d+, permId \d+\)",
                     entry), entry
    mtf = "\n".join(by_deployment["mtf-signal"])
    assert re.search(r"AAPL: P\(up\) 0\.\d{3}, price \d+\.\d\d -> (BUY|HOLD|NO_TRADE|SELL)", mtf), mtf
    assert "hourly bars:" in mtf
    assert any(m.startswith("reconciliation done: 2026-03-06") for m in by_deployment["reconciliation"])
    assert any(m.startswith("retrain done: ") for m in by_deployment["retrain"])


def test_a_secret_in_a_project_log_line_is_masked_in_the_ui(replayed, monkeypatch):
    import logging

    from prefect import flow
    from prefect.logging.handlers import APILogWorker

    from tasks.runtime import flow_run

    @flow(name="secret-probe")
    def probe() -> str:
        with flow_run("secret-probe", dt.datetime(2026, 3, 6, 18, 0, tzinfo=NY)):
            logging.getLogger("core.probe").info("alerting to %s", SECRET)
        from prefect.runtime import flow_run as current

        return str(current.id)

    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: replayed.server.api_url}):
        run_id = probe()
        APILogWorker.drain_all(timeout=30)
        messages = [log.message for log in logs_of(run_id)]
    assert "alerting to ***" in messages and not any("i16-secret-token" in m for m in messages)


# --- tradeflow status ------------------------------------------------------------------------------------------

def test_status_sections_agree_with_the_journal(replayed):
    from core.controls import KillSwitch
    from core.status import build_status, render

    settings, j = get_settings(), replayed.journal
    s = build_status(j, settings, AFTER, worker="READY: 1 worker(s) online")
    assert s.halt is None and s.breaks == []
    held = j.query("SELECT symbol, quantity FROM v_journal_positions WHERE quantity <> 0 ORDER BY symbol")
    assert sorted((p.symbol, p.quantity) for p in s.positions) == [(r.symbol, r.quantity)
                                                                    for r in held.itertuples()]
    smh = next(p for p in s.positions if p.symbol == "SMH")
    fill = j.query("SELECT price FROM executions WHERE order_ref = 'ema-SMH-20260306-entry'")["price"]
    assert smh.avg_cost == pytest.approx(float(fill.mean()))
    close = float(j.query("SELECT close FROM ema_state WHERE session = ?", [DAY])["close"].iloc[0])
    assert smh.mark == pytest.approx(close)  # ema-update's decision saw the official close
    assert smh.unrealized == pytest.approx((close - smh.avg_cost) * smh.quantity)
    assert s.pnl_session == DAY and {r["strategy"] for r in s.pnl} >= {"account", "ema"}
    e0 = j.query("SELECT net_liquidation FROM equity_snapshots WHERE session = ? AND kind = 'day_start'", [DAY])
    assert s.e0 == pytest.approx(float(e0.iloc[0, 0]))
    stop = j.query("SELECT order_ref, stop_price FROM orders WHERE order_type = 'STP' AND status = 'Submitted'")
    assert s.ema_stop["order_ref"] == stop["order_ref"].iloc[0] == "ema-SMH-20260306-entry-stop"
    assert s.ema_stop["stop_price"] == pytest.approx(float(stop["stop_price"].iloc[0]))
    ema = j.query("SELECT ema_fast, ema_slow, signal FROM ema_state ORDER BY session DESC LIMIT 1").iloc[0]
    assert (s.ema.session, s.ema.signal) == (DAY, ema["signal"])
    assert s.ema.gap == pytest.approx(ema["ema_fast"] / ema["ema_slow"] - 1)
    vix = j.query("SELECT TRY_CAST(inputs->>'vix_used' AS DOUBLE) AS v, TRY_CAST(inputs->>'leverage' AS DOUBLE) "
                  "AS l FROM signals WHERE strategy = 'ema' AND decision = 'BUY'").iloc[0]
    assert s.vix.vix == pytest.approx(vix["v"]) and s.vix.leverage == pytest.approx(vix["l"])
    champions = dict(j.query("SELECT symbol, version FROM models WHERE status = 'champion'").itertuples(index=False))
    last_p = j.query("SELECT symbol, probability FROM v_latest_signals WHERE strategy = 'mtf'")
    assert {m.symbol: m.champion for m in s.models} == champions
    assert {m.symbol: m.p_up for m in s.models} == pytest.approx(dict(last_p.itertuples(index=False)))
    assert s.session.date == DAY and not s.session.early_close
    assert dict(s.next_runs)["equity-snapshot"] == dt.datetime(2026, 3, 9, 9, 30, tzinfo=NY)
    assert dict(s.next_runs)["ema-entry"] == dt.datetime(2026, 3, 9, 15, 55, tzinfo=NY)
    assert {r.deployment: r.event for r in s.runs if r.deployment in DEPLOYMENTS} == dict.fromkeys(DEPLOYMENTS,
                                                                                                  "completed")
    text = render(s)
    for needle in ("not halted", "Position breaks\n  none", "ema-SMH-20260306-entry-stop",
                   f"{s.ema_stop['stop_price']:,.2f}", f"E0 (day-start NetLiquidation) {s.e0:,.2f}",
                   f"VIX {s.vix.vix:.2f}", champions["AAPL"], "next session 2026-03-09", "READY: 1 worker(s)",
                   "ema-entry        completed  2026-03-06 15:55"):
        assert needle in text, (needle, text)
    assert render(s, markdown=True).startswith("### tradeflow status 2026-03-06 18:30\n\ntrading allowed; holding")
    # halted: the first line and the kill switch section say so
    KillSwitch(settings.state_dir).halt(j, "tester", "checking the broker", AFTER)
    try:
        halted = render(build_status(j, settings, AFTER))
        assert "HALTED (checking the broker)" in halted.splitlines()[1]
        assert "trading halted by tester" in halted and "Worker\n  unknown" in halted
    finally:
        KillSwitch(settings.state_dir).resume(j, "tester", "done", AFTER)


def test_status_is_published_as_an_artifact_for_the_morning_check(replayed):
    from prefect import flow
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.runtime import flow_run
    from tasks.ui import publish_status

    @flow(name="status-probe")
    def probe() -> str:
        with flow_run("status-probe", AFTER) as run:
            return publish_status(run)

    with temporary_settings({PREFECT_API_URL: replayed.server.api_url}):
        markdown = probe()
        published = [a.data for a in _artifacts("status")]
    assert markdown in published
    assert any(d.startswith("### tradeflow status 2026-03-06 09:00") for d in published)  # preflight's, that morning
    assert markdown.startswith("### tradeflow status 2026-03-06 18:30\n\n") and "#### EMA state" in markdown


def test_status_command_prints_one_screen(replayed, capsys):
    from deployments.cli import main

    assert main(["status", "--as-of", AFTER.isoformat()]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tradeflow status at 2026-03-06 18:30 New York\n")
    titles = ["Kill switch", "Position breaks", "Positions", "Day-start equity and stop", "EMA state", "VIX tier",
              "MTF models", "Session and next runs", "Worker", "Last runs"]
    assert [t for t in titles if f"\n{t}\n" in out] == titles
    assert "no work pool 'tradeflow'" in out  # asked of the Prefect API: nothing was deployed on this server
    assert main(["status", "--as-of", "2026-03-06T18:30"]) == 2


# --- artifacts and charts --------------------------------------------------------------------------------------

def _artifacts(key: str) -> list:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    return _read(lambda c: c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))))


def test_artifacts_open_with_a_sentence_and_carry_their_charts(replayed):
    ema = _artifacts("ema-update")[0].data
    lines = ema.splitlines()
    assert lines[0] == "### ema-update 2026-03-06: BULL" and lines[2].startswith("BULL close ")
    assert "| input | value |" in ema and "data:image/png;base64," in ema
    entry = _artifacts("ema-entry")[0].data
    assert "| leverage |" in entry and "| order_ref | ema-SMH-20260306-entry |" in entry
    assert "data:image/png;base64," in _artifacts("reconciliation-equity-curve")[0].data
    assert "data:image/png;base64," in _artifacts("mtf-session")[0].data
    retrain = _artifacts("retrain-aapl-chart")[0].data
    assert retrain.startswith("### AAPL champion against challenger on oos:2026-02\n\nChallenger ")
    assert "data:image/png;base64," in retrain
    reports = replayed.state_dir / "reports"
    assert {p.name for p in reports.glob("*.png")} >= {"ema-2026-03-06.png", "equity-2026-03-06.png",
                                                       "mtf-2026-03-06.png", "retrain-AAPL-oos-2026-02.png"}


def test_plot_command_draws_each_chart(replayed, tmp_path, capsys):
    from deployments.cli import main

    for chart in ("ema", "mtf", "equity", "retrain"):
        out = tmp_path / f"{chart}.png"
        assert main(["plot", chart, "--out", str(out)]) == 0
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert main(["plot", "mtf", "--session", "2026-03-05"]) == 1
    assert "no P(up) journaled on 2026-03-05" in capsys.readouterr().err


def test_equity_chart_of_one_session_spans_that_day():
    import io

    import matplotlib.image
    import pandas as pd

    from core.charts import equity_chart_png

    points = pd.DataFrame({"as_of": [dt.datetime(2026, 3, 6, 9, 30, tzinfo=NY),
                                     dt.datetime(2026, 3, 6, 17, 0, tzinfo=NY)],
                           "net_liquidation": [1_000_000.0, 998_000.0]})
    png = equity_chart_png(points, pd.DataFrame({"session": [DAY, DAY], "strategy": ["account", "ema"],
                                                 "net_pnl": [-2000.0, -2000.0]}))
    assert matplotlib.image.imread(io.BytesIO(png)).shape[0] > 400
    with pytest.raises(ValueError, match="no equity recorded"):
        equity_chart_png(points.iloc[:0])


# --- a real browser ------------------------------------------------------------------------------------------------

def test_the_ui_shows_the_ema_entry_run_and_a_chart_in_a_real_browser(replayed, tmp_path):
    from tests.browser_support import Browser, chromium_path

    if chromium_path() is None:
        pytest.skip("chromium is not installed (.ci/run installs it)")
    run = next(r for r in replayed.runs if r.name == "ema-entry 2026-03-06 15:55")
    ui = replayed.server.ui_url
    shots = Path(os.environ.get("TRADEFLOW_SCREENSHOTS_DIR") or tmp_path)  # for a person to look at
    shots.mkdir(parents=True, exist_ok=True)
    with Browser.start(tmp_path / "chromium") as browser:
        page = browser.open(f"{ui}/runs/flow-run/{run.id}")
        page.wait_for("document.body.innerText.includes('ema-entry 2026-03-06 15:55')", timeout=90)
        page.wait_for("/decided \\(ema, signal BULL\\): BUY \\d+ SMH/.test(document.body.innerText) && "
                      "document.body.innerText.includes('sending BUY') && "
                      "document.body.innerText.includes('orderRef ema-SMH-20260306-entry')", timeout=90)
        page.evaluate("[...document.querySelectorAll('body *')].find(e => !e.children.length && "
                      "e.textContent.startsWith('decided (ema')).scrollIntoView({block: 'center'})")
        page.screenshot(shots / "ema-entry-run.png")
        for key, text in (("ema-update", "BULL close"), ("reconciliation-equity-curve", "NetLiquidation at each snapshot")):
            page = browser.open(f"{ui}/artifacts/artifact/{_artifacts(key)[0].id}")
            loaded = page.wait_for("[...document.images].filter(i => i.src.startsWith('data:image/png') && "
                                   "i.complete && i.naturalWidth > 400).map(i => [i.naturalWidth, i.naturalHeight])",
                                   timeout=90)
            assert loaded and loaded[0][1] > 200, key
            assert text in page.text(), key
            page.screenshot(shots / f"{key}-artifact.png")


def test_cross_close_is_the_close_at_which_the_emas_meet():
    from core.status import cross_close
    from core.strategies.ema import ema_step

    c = cross_close(101.0, 100.0, 25, 125)
    assert c is not None and 0 < c < 100
    assert ema_step(101.0, c, 25) == pytest.approx(ema_step(100.0, c, 125))
    assert cross_close(401.74, 363.84, 25, 125) < 0  # too far apart for one close: status says so
