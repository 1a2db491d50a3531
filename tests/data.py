"""Where the tests find the real market data, and the one way they skip when it is missing.

`DATA_DIR` is the bars folder of the settings (TRADEFLOW_DATA_DIR, `.env`, else ../shared/data/bars).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core.settings import load_settings

DATA_DIR = Path(load_settings().data_dir)


def require_bars(*files: str | Path) -> Path:
    """Skip the calling test, saying where it looked, unless each file exists (relative to DATA_DIR, or
    absolute); returns DATA_DIR."""
    for name in files:
        path = DATA_DIR / name
        if not path.is_file():
            pytest.skip(f"needs the shared market data: {path} not found (set TRADEFLOW_DATA_DIR to shared/data/bars)")
    return DATA_DIR
