"""The pre-open check (`preflight`): green on the paper exchange with champions in the registry; red, naming the
item and why, with no gateway, with trading halted, with an open position break, with a missing model, and with
a nearly full state directory (a 4 MiB tmpfs when this user may mount one). The real flow on the real Prefect
server (`prefect_harness`), the real IBBroker against the paper exchange."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest

from core.calendar import NY
from core.controls import KillSwitch
from core.journal import Journal
from core.settings import get_settings
from deployments.processes import free_port
from tests.broker_support import START
from tests.mtf_support import model_templates, models  # noqa: F401

pytestmark = pytest.mark.prefect_server


@pytest.fixture
def checked(exchange, prefect_harness, models, monkeypatch):  # noqa: F811
    """Run preflight at the exchange's START; returns (state, checklist dict item -> status)."""
    from flows.preflight import preflight

    models.champion("AAPL", 0.9)
    models.champion("TSLA", 0.1)
    monkeypatch.setenv("TRADEFLOW_PREFLIGHT_MAX_MODEL_AGE_DAYS", "30")

    def go():
        get_settings.cache_clear()
        state = preflight(as_of=START, return_state=True)
        return state

    return go


def _message(state) -> str:
    return str(state.message)


def test_green_on_the_paper_exchange(checked):
    state = checked()
    assert state.is_completed(), _message(state)
    result = state.result()
    assert result["connection"] == "green" and result["account"] == "green"
    assert {result[f"market data {s}"] for s in ("SMH", "AAPL", "TSLA")} == {"green"}
    assert result["buying power"] == result["model AAPL"] == result["kill switch"] == "green"
    assert result["position breaks"] == result["disk"] == "green"


def test_red_with_no_gateway_names_host_port_and_client_id(checked, monkeypatch):
    port = free_port()
    monkeypatch.setenv("IBKR_PORT", str(port))
    state = checked()
    assert state.is_failed()
    assert f"connection: no connection to 127.0.0.1:{port} client id 6" in _message(state)


def test_red_when_halted(checked, state_dir):
    KillSwitch(state_dir).halt(Journal(state_dir / "journal.duckdb"), "ops", "broker outage",
                               dt.datetime(2026, 3, 2, 8, 0, tzinfo=NY))
    state = checked()
    assert state.is_failed() and "kill switch: halted by ops" in _message(state) and "broker outage" in _message(state)


def test_red_with_an_open_position_break(checked, state_dir):
    with Journal(state_dir / "journal.duckdb").transaction() as tx:
        tx.record_break("AAPL", dt.date(2026, 2, 27), 10, 0, dt.datetime(2026, 2, 27, 17, 0, tzinfo=NY))
    state = checked()
    assert state.is_failed() and "position breaks: unresolved breaks block orders for AAPL" in _message(state)


def test_red_with_a_missing_model(checked, state_dir, models):  # noqa: F811
    import shutil

    shutil.rmtree(state_dir / "models" / "TSLA")  # this host's cache only: the champion is in the journal
    assert models.registry.champion("TSLA") is not None
    with Journal(state_dir / "journal.duckdb").transaction() as tx:  # a registry whose TSLA has no champion
        tx.fetch("DELETE FROM model_champions WHERE symbol = 'TSLA'")
    state_first = checked()
    assert state_first.is_failed() and "model TSLA: no MTF champion" in _message(state_first)
    assert "model AAPL" not in _message(state_first)


def test_red_with_a_nearly_full_state_directory(checked, state_dir, tmp_path, monkeypatch):
    mount = tmp_path / "small-tmpfs"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
                             capture_output=True).returncode == 0
    try:
        if mounted:
            small = mount / "state"
            small.mkdir()
            # the journal (which holds the model registry) and the models cache move with the state directory
            import shutil

            Journal(state_dir / "journal.duckdb").stop_writer()
            shutil.copy2(state_dir / "journal.duckdb", small / "journal.duckdb")
            shutil.copytree(state_dir / "models", small / "models")
            monkeypatch.setenv("TRADEFLOW_STATE_DIR", str(small))
            # the 16 MiB file system (the journal with the test's models and its snapshot fill about 8) is below it
            monkeypatch.setenv("TRADEFLOW_PREFLIGHT_MIN_FREE_MB", "20")
        else:
            # SUBSTITUTE (no permission to mount): a threshold above the free space of the real disk
            free_mb = shutil.disk_usage(state_dir).free / 2**20
            monkeypatch.setenv("TRADEFLOW_PREFLIGHT_MIN_FREE_MB", str(free_mb * 2))
        state = checked()
        assert state.is_failed() and "disk: " in _message(state) and "MiB free in the state directory" in \
            _message(state)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mount)], check=False)


def test_the_checklist_evaluation_names_each_red_item_and_why():
    from core.preflight import PreflightFacts, QuoteFact, evaluate, failure_message

    as_of = dt.datetime(2026, 3, 2, 9, 0, tzinfo=NY)
    facts = PreflightFacts(host="h", port=1, client_id=6, trading_mode="paper", account="U123",
                           quotes=[QuoteFact("SMH", 300.0, delayed=True)], net_liquidation=1e6, buying_power=2e6,
                           leverage=3.75, leverage_reason="VIX 11", champions={"AAPL": ("v1", as_of - dt.timedelta(days=90))},
                           free_bytes=10 * 2**30, schedule_ends=dt.date(2026, 3, 20))
    items = {i.name: i for i in evaluate(facts, as_of)}
    assert items["account"].status == "red" and "not a paper account" in items["account"].detail
    assert items["market data SMH"].status == "red" and "delayed" in items["market data SMH"].detail
    assert items["buying power"].status == "red" and "sized down" in items["buying power"].detail
    assert items["model AAPL"].status == "red" and "90 days ago" in items["model AAPL"].detail
    assert items["schedule window"].status == "red" and "18 days left" in items["schedule window"].detail
    assert items["disk"].status == items["kill switch"].status == "green"
    assert failure_message(list(items.values())).startswith("preflight red: account: paper mode")
