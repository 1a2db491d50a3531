"""Shared fixtures.

The real market data: `tests/data.py` (`require_bars`). `state_dir`: a fresh state directory whose path
is exported as `TRADEFLOW_STATE_DIR` for the test and any process it starts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import get_settings


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



pytest_plugins = ["tests.prefect_support"]  # the session's real Prefect server (`prefect_server`, `prefect_api`)
