"""Shared fixtures.

`data_dir`: the real market data (`TRADEFLOW_DATA_DIR`, default `../shared/data/bars`); tests that need it
are skipped with a message saying where it was looked for. `state_dir`: a fresh state directory whose path
is exported as `TRADEFLOW_STATE_DIR` for the test and any process it starts.
"""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ.get("TRADEFLOW_DATA_DIR") or get_settings().data_dir)
    if not (path / "daily").is_dir():
        pytest.skip(
            f"needs the shared market data: no bars at {path} (clone the project beside shared/, "
            "or set TRADEFLOW_DATA_DIR)"
        )
    return path
