"""Reading bars in the format of shared/data/bars (`timestamp,open,high,low,close,volume`), one reader for all.

Layout: `<data_dir>/daily/<SYMBOL>.csv`, `<data_dir>/1h/<SYMBOL>.csv`, `<data_dir>/5m/<SYMBOL>.csv`
(`data_dir` = setting TRADEFLOW_DATA_DIR, default `../shared/data/bars`; see shared/data/README.md).
Intraday timestamps are bar START times in ISO 8601 with their America/New_York offset; daily timestamps are
session dates. Prices are USD (index points for VIX); volume is shares (0 is valid, not missing).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

NY_TZ = "America/New_York"
BAR_SIZES = ("daily", "1h", "5m")
_PRICE_COLUMNS = ["open", "high", "low", "close"]

__all__ = ["BAR_SIZES", "BarsError", "bars_path", "load_daily_bars", "load_hourly_bars", "read_bars_csv"]


class BarsError(ValueError):
    """A bars file is missing or malformed; the message names the file and, where one is, the first bad row."""


def bars_path(data_dir: str | Path, bar_size: str, symbol: str) -> Path:
    """`<data_dir>/<bar_size>/<SYMBOL>.csv`, bar_size one of `BAR_SIZES`."""
    if bar_size not in BAR_SIZES:
        raise ValueError(f"bar_size must be one of {BAR_SIZES}, got {bar_size!r}")
    return Path(data_dir) / bar_size / f"{symbol.upper()}.csv"


def read_bars_csv(path: str | Path, daily: bool = False) -> pd.DataFrame:
    """Read and check one bars CSV.

    Returns:
        Intraday (`daily=False`): index `timestamp`, the bar start (tz-aware DatetimeIndex, America/New_York).
        Daily (`daily=True`): index `session`, the session date (tz-naive DatetimeIndex at midnight).
        Columns `open, high, low, close, volume` (float64), strictly increasing index.

    Raises:
        BarsError: the file is missing (the message names it and the TRADEFLOW_DATA_DIR setting), is not CSV,
            lacks a column, has an unparseable, duplicate or out-of-order timestamp, or a NaN / non-positive
            price (naming the first bad row).
    """
    path = Path(path)
    if not path.is_file():
        raise BarsError(f"bars file not found: {path} (set TRADEFLOW_DATA_DIR to the folder holding daily/, 1h/, 5m/)")
    try:
        df = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as exc:
        raise BarsError(f"{path}: cannot be read as CSV: {exc}") from None
    missing = [c for c in ("timestamp", *_PRICE_COLUMNS, "volume") if c not in df.columns]
    if missing:
        raise BarsError(f"{path}: missing column(s) {missing}; expected timestamp,open,high,low,close,volume")
    try:
        if daily:
            idx = pd.DatetimeIndex(pd.to_datetime(df["timestamp"], format="%Y-%m-%d"), name="session")
        else:
            stamps = pd.to_datetime(df["timestamp"], utc=True).dt.tz_convert(NY_TZ)
            idx = pd.DatetimeIndex(stamps, name="timestamp")
    except (ValueError, TypeError) as exc:
        raise BarsError(f"{path}: unparseable timestamp: {exc}") from None
    out = df[[*_PRICE_COLUMNS, "volume"]].astype("float64")
    out.index = idx
    if idx.has_duplicates:
        raise BarsError(f"{path}: duplicate timestamp {idx[idx.duplicated()][0]}")
    if not idx.is_monotonic_increasing:
        row = int(np.argmax(idx[1:] < idx[:-1])) + 1
        raise BarsError(f"{path}: timestamps out of order at {idx[row]}")
    prices = out[_PRICE_COLUMNS].to_numpy()
    bad = ~(np.isfinite(prices) & (prices > 0))
    if bad.any():
        raise BarsError(f"{path}: NaN or non-positive price at {idx[int(np.argmax(bad.any(axis=1)))]}")
    return out


def load_daily_bars(data_dir: str | Path, symbol: str) -> pd.DataFrame:
    """The daily bars of `symbol` (see `read_bars_csv`, daily shape)."""
    return read_bars_csv(bars_path(data_dir, "daily", symbol), daily=True)


def load_hourly_bars(data_dir: str | Path, symbol: str) -> pd.DataFrame:
    """The hourly bars of `symbol` (see `read_bars_csv`, intraday shape)."""
    return read_bars_csv(bars_path(data_dir, "1h", symbol))
