"""Shared fixtures.

The real market data: `tests/data.py` (`require_bars`). `state_dir`: a fresh state directory whose path
is exported as `TRADEFLOW_STATE_DIR` for the test and any process it starts.

- `exchange`: an in-process PaperExchange (loopback, free ports, clock stopped at START unless moved through
  `exchange.clock` / `AdminClient`), with IBKR_HOST/IBKR_PORT exported so that flows connect to it, and a
  fresh state directory (journal, HALT file, models) exported as TRADEFLOW_STATE_DIR.
- `prefect_harness`: one temporary Prefect API for the whole test session (flows run as real Prefect flow
  runs); defined here, once, so that every module shares the same server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.paper_exchange import PaperExchange
from core.settings import get_settings
from tests.broker_support import START, require_data


@pytest.fixture(autouse=True)
def _fresh_settings():
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("TRADEFLOW_STATE_DIR", str(state))
    return state


@pytest.fixture
def exchange(tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[PaperExchange]:
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
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
