"""Shared fixtures.

The real market data: `tests/data.py` (`require_bars`). `state_dir`: a fresh state directory whose path
is exported as `TRADEFLOW_STATE_DIR` for the test and any process it starts.

- `exchange`: an in-process PaperExchange (loopback, free ports, clock stopped at START unless moved through
  `exchange.clock` / `AdminClient`), with IBKR_HOST/IBKR_PORT exported so that flows connect to it, and a
  fresh state directory (journal, HALT file, models) exported as TRADEFLOW_STATE_DIR.
- `prefect_harness`: every flow run of the session goes to the session's one real Prefect server
  (`tests/prefect_support.py`, `deployments.prefect_server`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.settings import get_settings


@pytest.fixture(autouse=True)
def _fresh_settings():
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def _fresh_pacing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts with empty historical-data pacers: production runs each flow in a process of its own,
    so IBBroker's pacer (60 requests in 10 minutes per gateway, core/ib_broker.py) starts empty for each run;
    tests run many flows in one process, and an ephemeral port can come back for another test's exchange."""
    ib_broker = sys.modules.get("core.ib_broker")  # not imported here: the conformance environments lack it
    if ib_broker is not None:
        monkeypatch.setattr(ib_broker, "_historical_pacers", {})


@pytest.fixture(autouse=True)
def _retries_without_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flows run in a test retry as many times as tasks/run_policy.py says, without its minutes between attempts
    (ema-update's and reconciliation's 120 s made a failing run's test last minutes). Flows a test runs in a
    subprocess keep their delays."""
    if "prefect" not in sys.modules:  # nothing to patch (the conformance environments have no Prefect)
        return
    from prefect import Flow

    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(("flows.", "strategies.", "tests.")):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, Flow) and value.retries and value.retry_delay_seconds:
                monkeypatch.setattr(value, "retry_delay_seconds", 0)


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("TRADEFLOW_STATE_DIR", str(state))
    return state


@pytest.fixture
def exchange(tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator["PaperExchange"]:  # noqa: F821
    from core.paper_exchange import PaperExchange
    from tests.broker_support import START, require_data

    data = require_data()
    ex = PaperExchange(data, start=START, state_file=tmp_path / "paper-exchange.json").start()
    monkeypatch.setenv("IBKR_HOST", "127.0.0.1")
    monkeypatch.setenv("IBKR_PORT", str(ex.port))
    monkeypatch.setenv("TRADEFLOW_DATA_DIR", str(data))
    try:
        yield ex
    finally:
        ex.stop()


@pytest.fixture(scope="session")
def prefect_harness(prefect_server) -> Iterator[str]:
    """Point every flow run of the session (and the processes tests start) at the session's real Prefect
    server (`tests/prefect_support.py`); yields its API URL."""
    import os

    from prefect.settings import PREFECT_API_URL, temporary_settings

    before = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = prefect_server.api_url
    try:
        with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
            yield prefect_server.api_url
    finally:
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before

pytest_plugins = ["tests.prefect_support"]  # the session's real Prefect server (`prefect_server`, `prefect_api`)


@pytest.fixture(autouse=True, scope="session")
def _short_lived_journal_writers():
    """Each test's journal writer (`core.journal.server`) exits 5 s after its last request, not 60 s, so that the
    many temporary journals of a session do not keep a writer process each."""
    import os

    old = os.environ.get("TRADEFLOW_JOURNAL_IDLE_SECONDS")
    os.environ["TRADEFLOW_JOURNAL_IDLE_SECONDS"] = "5"
    yield
    if old is None:
        os.environ.pop("TRADEFLOW_JOURNAL_IDLE_SECONDS", None)
    else:
        os.environ["TRADEFLOW_JOURNAL_IDLE_SECONDS"] = old
