"""Reading bars in the format of shared/data/bars (``timestamp,open,high,low,close,volume``).

Intraday timestamps are bar START times in ISO 8601 with their America/New_York offset; they are returned as a
tz-aware America/New_York DatetimeIndex named ``timestamp``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

NY_TZ = "America/New_York"


def read_bars_csv(path: str | Path) -> pd.DataFrame:
    """Read one bars CSV.

    Returns:
        DataFrame indexed by bar start (tz-aware, America/New_York), columns open, high, low, close, volume
        (float64).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file lacks a ``timestamp`` column.
    """
    df = pd.read_csv(path)
    if "timestamp" not in df.columns:
        raise ValueError(f"{path}: no 'timestamp' column (columns: {list(df.columns)})")
    idx = pd.to_datetime(df.pop("timestamp"), utc=True).dt.tz_convert(NY_TZ)
    df.index = pd.DatetimeIndex(idx, name="timestamp")
    return df[["open", "high", "low", "close", "volume"]].astype("float64")


def hourly_bars_path(data_dir: str | Path, symbol: str) -> Path:
    """``<data_dir>/1h/<SYMBOL>.csv`` (data_dir = settings.data_dir, the shared/data/bars folder)."""
    return Path(data_dir) / "1h" / f"{symbol.upper()}.csv"


def load_hourly_bars(data_dir: str | Path, symbol: str) -> pd.DataFrame:
    """The hourly bars of ``symbol`` from ``data_dir`` (see :func:`read_bars_csv`)."""
    return read_bars_csv(hourly_bars_path(data_dir, symbol))
