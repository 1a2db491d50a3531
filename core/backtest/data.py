"""Read daily bars in the format of shared/data/bars (see shared/data/README.md).

A daily file `<data_dir>/daily/<SYMBOL>.csv` has the columns `timestamp,open,high,low,close,volume`, where
`timestamp` is the session date (America/New_York) and prices are USD (index points for VIX). Only NYSE sessions
appear.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["BarsError", "daily_bars_path", "load_daily_bars"]

_PRICE_COLUMNS = ("open", "high", "low", "close")


class BarsError(ValueError):
    """A bars file is missing or malformed; the message names the file."""


def daily_bars_path(data_dir: Path | str, symbol: str) -> Path:
    """`<data_dir>/daily/<symbol>.csv`."""
    return Path(data_dir) / "daily" / f"{symbol}.csv"


def load_daily_bars(data_dir: Path | str, symbol: str) -> pd.DataFrame:
    """The daily bars of `symbol` as a DataFrame.

    Returns:
        Index `session` (a tz-naive `DatetimeIndex` of session dates, strictly increasing); float columns
        `open, high, low, close` (USD, or index points for VIX) and `volume` (shares).

    Raises:
        BarsError: the file does not exist (the message gives its full path and the data directory setting
            TRADEFLOW_DATA_DIR), lacks a column, has an unparseable or duplicate date, or has a NaN / non-positive
            price (naming the file and the first bad session).
    """
    path = daily_bars_path(data_dir, symbol)
    if not path.is_file():
        raise BarsError(
            f"daily bars for {symbol} not found: {path} (set TRADEFLOW_DATA_DIR to the folder holding daily/)"
        )
    try:
        df = pd.read_csv(path)
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as exc:
        raise BarsError(f"{path}: cannot be read as CSV: {exc}") from None
    missing = [c for c in ("timestamp", *_PRICE_COLUMNS) if c not in df.columns]
    if missing:
        raise BarsError(f"{path}: missing column(s) {missing}; expected timestamp,open,high,low,close,volume")
    try:
        idx = pd.DatetimeIndex(pd.to_datetime(df["timestamp"], format="%Y-%m-%d"), name="session")
    except (ValueError, TypeError) as exc:
        raise BarsError(f"{path}: timestamp is not a session date (YYYY-MM-DD): {exc}") from None
    out = df[list(_PRICE_COLUMNS)].astype(float)
    out["volume"] = df["volume"].astype(float) if "volume" in df.columns else np.nan
    out.index = idx
    if not idx.is_monotonic_increasing or idx.has_duplicates:
        dup = idx[idx.duplicated()]
        where = f" (duplicate {dup[0].date()})" if len(dup) else ""
        raise BarsError(f"{path}: sessions are not strictly increasing{where}")
    prices = out[list(_PRICE_COLUMNS)].to_numpy()
    bad = ~(np.isfinite(prices) & (prices > 0))
    if bad.any():
        row = int(np.argmax(bad.any(axis=1)))
        raise BarsError(f"{path}: NaN or non-positive price on {idx[row].date()}")
    return out
