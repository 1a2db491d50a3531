"""Bars the paper exchange serves and fills against, read from a directory in the format of shared/data/bars.

Layout: `DIR/5m/SYM.csv`, `DIR/1h/SYM.csv`, `DIR/daily/SYM.csv`, each `timestamp,open,high,low,close,volume`;
intraday timestamps are bar STARTS with their America/New_York offset, daily timestamps are session dates.

Series per symbol (all times are epoch seconds internally, America/New_York at the edges):
- 5 mins: the 5m file as is.
- 1 hour: for sessions with 5-minute bars, aggregated from them on the 09:30, 10:30 … grid of the hourly files
  (the last bar of a session is shorter); other sessions come from the 1h file.
- 1 day: for sessions with 5-minute bars, aggregated from them; other sessions come from the daily file.
  A daily bar spans 09:30 to the session's close on the NYSE calendar (13:00 on early closes).
So every price served for a session with 5-minute bars agrees across bar sizes.

The "fine" series (used for fills and quotes) is, per session, the 5-minute bars if any, else the hourly bars,
else the daily bar.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from core.bars import read_bars_csv
from core.calendar import sessions as nyse_sessions

NY = ZoneInfo("America/New_York")
BAR_SIZES = {"5 mins": 300, "1 hour": 3600, "1 day": 86400}
"""The bar sizes served, as IB spells them, with their nominal length in seconds."""


class UnknownSymbolError(KeyError):
    """No data file for the symbol (the server answers IB error 200)."""


class BadRequestError(ValueError):
    """A historical request the exchange cannot serve (bad bar size or duration; IB error 321)."""


@dataclass
class Series:
    """Bars of one symbol and size as parallel numpy arrays (start/end epoch seconds, prices USD)."""

    start: np.ndarray
    end: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    session: np.ndarray  # session date as int YYYYMMDD

    def __len__(self) -> int:
        return len(self.start)

    @classmethod
    def from_frame(cls, df: pd.DataFrame) -> "Series":
        df = df.sort_values("start")
        return cls(*(df[c].to_numpy() for c in ("start", "end", "open", "high", "low", "close", "volume",
                                                 "session")))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"start": self.start, "end": self.end, "open": self.open, "high": self.high,
                             "low": self.low, "close": self.close, "volume": self.volume,
                             "session": self.session})


def _epoch(ts: pd.Series) -> np.ndarray:
    return (ts.astype("datetime64[ns, UTC]").astype("int64") // 10**9).to_numpy()


def _session_int(d: date) -> int:
    return d.year * 10000 + d.month * 100 + d.day


def _ny_epoch(d: date, t: time) -> int:
    return int(datetime.combine(d, t, NY).timestamp())


def _session_closes(days: list[date]) -> dict[int, int]:
    """Close (epoch seconds) of each NYSE session from the first to the last of `days` (early closes 13:00)."""
    return {_session_int(s.date): int(s.close.timestamp()) for s in nyse_sessions(min(days), max(days))}


def _read_intraday(path: Path, length: int) -> pd.DataFrame:
    bars = read_bars_csv(path)  # checked: order, duplicates, NaN and non-positive prices
    local = bars.index.to_series()
    out = pd.DataFrame({"start": _epoch(local)})
    out["session"] = (local.dt.year * 10000 + local.dt.month * 100 + local.dt.day).to_numpy()
    for c in ("open", "high", "low", "close", "volume"):
        out[c] = bars[c].to_numpy()
    # a bar ends after its length, or at the session's close (the last hourly bar of 15:30 is 30 minutes)
    closes = out["session"].map(_session_closes(sorted(set(local.dt.date))))
    out["end"] = np.minimum(out["start"] + length, closes.fillna(np.inf)).astype("int64")
    return out


def _read_daily(path: Path) -> pd.DataFrame:
    bars = read_bars_csv(path, daily=True)
    dates = [d.date() for d in bars.index]
    closes = _session_closes(dates)
    out = pd.DataFrame({
        "start": [_ny_epoch(d, time(9, 30)) for d in dates],
        "end": [closes.get(_session_int(d), _ny_epoch(d, time(16, 0))) for d in dates],
        "session": [_session_int(d) for d in dates],
    })
    for c in ("open", "high", "low", "close", "volume"):
        out[c] = bars[c].to_numpy()
    return out


def _aggregate(five: pd.DataFrame, key: pd.Series) -> pd.DataFrame:
    g = five.groupby(key, sort=True)
    return pd.DataFrame({
        "start": g["start"].min(), "end": g["end"].max(), "open": g["open"].first(), "high": g["high"].max(),
        "low": g["low"].min(), "close": g["close"].last(), "volume": g["volume"].sum(),
        "session": g["session"].first(),
    }).reset_index(drop=True)


def _hour_key(five: pd.DataFrame) -> pd.Series:
    """Bucket of each 5-minute bar on the 09:30, 10:30 … grid: (start - 09:30 of its session) // 3600."""
    first = five.groupby("session")["start"].transform("min")
    return five["session"].astype("int64") * 100 + (five["start"] - first) // 3600


class SymbolData:
    """All series of one symbol. Built once, read-only afterwards (safe to share between threads)."""

    def __init__(self, symbol: str, root: Path):
        self.symbol = symbol
        paths = {k: root / k / f"{symbol}.csv" for k in ("5m", "1h", "daily")}
        if not any(p.exists() for p in paths.values()):
            raise UnknownSymbolError(symbol)
        five = _read_intraday(paths["5m"], 300) if paths["5m"].exists() else None
        hourly = _read_intraday(paths["1h"], 3600) if paths["1h"].exists() else None
        daily = _read_daily(paths["daily"]) if paths["daily"].exists() else None
        covered = set(five["session"].unique()) if five is not None else set()
        parts_h, parts_d = [], []
        if five is not None:
            parts_h.append(_aggregate(five, _hour_key(five)))
            parts_d.append(_aggregate(five, five["session"]))
        if hourly is not None:
            parts_h.append(hourly[~hourly["session"].isin(covered)])
        if daily is not None:
            parts_d.append(daily[~daily["session"].isin(covered)])
        self.series: dict[str, Series] = {}
        if five is not None:
            self.series["5 mins"] = Series.from_frame(five)
        if parts_h:
            self.series["1 hour"] = Series.from_frame(pd.concat(parts_h, ignore_index=True))
        if parts_d:
            self.series["1 day"] = Series.from_frame(pd.concat(parts_d, ignore_index=True))
        # fine series: 5m where present, else hourly, else daily, per session
        fine_parts = []
        if five is not None:
            fine_parts.append(five)
        got = set(covered)
        if hourly is not None:
            h = hourly[~hourly["session"].isin(got)]
            fine_parts.append(h)
            got |= set(h["session"].unique())
        if daily is not None:
            fine_parts.append(daily[~daily["session"].isin(got)])
        self.fine = Series.from_frame(pd.concat(fine_parts, ignore_index=True))
        self.daily = self.series.get("1 day", self.fine)


_DURATION = re.compile(r"^\s*(\d+)\s*([SDWMY])\s*$", re.I)


class MarketData:
    """Bars of every symbol in a bars directory, loaded lazily per symbol and cached (thread-safe)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self._symbols: dict[str, SymbolData] = {}
        self._lock = threading.Lock()

    def has(self, symbol: str) -> bool:
        """Whether any bars file exists for `symbol`."""
        try:
            self.get(symbol)
            return True
        except UnknownSymbolError:
            return False

    def get(self, symbol: str) -> SymbolData:
        """The series of `symbol`. Raises UnknownSymbolError."""
        symbol = symbol.upper()
        with self._lock:
            data = self._symbols.get(symbol)
            if data is None:
                if not re.fullmatch(r"[A-Z0-9.\-]{1,12}", symbol):
                    raise UnknownSymbolError(symbol)
                data = SymbolData(symbol, self.root)
                self._symbols[symbol] = data
            return data

    # --- prices at a moment -------------------------------------------------------------------------------

    def last_price(self, symbol: str, t: int) -> float | None:
        """The last known trade price at epoch second `t`: the open of the fine bar in progress at `t`, else
        the close of the last fine bar that ended at or before `t`; None before the first bar."""
        s = self.get(symbol).fine
        i = int(np.searchsorted(s.start, t, side="right")) - 1
        if i < 0:
            return None
        if t < s.end[i]:
            return float(s.open[i])
        return float(s.close[i])

    def previous_close(self, symbol: str, t: int) -> float | None:
        """The close of the last session that ended before the session containing `t` (USD)."""
        d = self.get(symbol).daily
        day = _session_int(datetime.fromtimestamp(t, NY).date())
        i = int(np.searchsorted(d.session, day, side="left")) - 1
        return float(d.close[i]) if i >= 0 else None

    def session_volume(self, symbol: str, t: int) -> float:
        """Volume traded so far in the session of `t` (shares, from fine bars that ended by `t`)."""
        s = self.get(symbol).fine
        day = _session_int(datetime.fromtimestamp(t, NY).date())
        m = (s.session == day) & (s.end <= t)
        return float(s.volume[m].sum())

    # --- historical requests --------------------------------------------------------------------------------

    def history(self, symbol: str, bar_size: str, end: int, duration: str) -> list[tuple[int, int, float, float,
                                                                                          float, float, float]]:
        """Bars (start, session, open, high, low, close, volume) of `bar_size` ending at epoch `end`.

        Bars that ended at or before `end` are returned whole. For 1-hour and 1-day bars built from 5-minute
        bars, the bar in progress at `end` is returned partially, aggregated from its 5-minute bars that
        ended by `end` (what IB does with an incomplete last bar). Nothing that starts after `end` is ever
        returned.

        Durations: `N S` (seconds before `end`), `N D` (the last N sessions, counting the one in progress),
        `N W` (7N calendar days), `N M` (31N calendar days), `N Y` (365N calendar days).

        Raises UnknownSymbolError, BadRequestError.
        """
        data = self.get(symbol)
        if bar_size not in BAR_SIZES:
            raise BadRequestError(f"bar size {bar_size!r} not supported (use one of {sorted(BAR_SIZES)})")
        m = _DURATION.match(duration or "")
        if not m:
            raise BadRequestError(f"invalid duration {duration!r}")
        n, unit = int(m.group(1)), m.group(2).upper()
        s = data.series.get(bar_size)
        if s is None or n <= 0:
            return []
        hi = int(np.searchsorted(s.end, end, side="right"))  # bars with end <= end (ends ascend with starts)
        partial = None
        if hi < len(s) and s.start[hi] <= end and bar_size != "5 mins" and "5 mins" in data.series:
            f = data.series["5 mins"]
            m5 = (f.start >= s.start[hi]) & (f.end <= end) & (f.start < s.end[hi])
            if m5.any():
                partial = (int(s.start[hi]), int(s.session[hi]), float(f.open[m5][0]), float(f.high[m5].max()),
                           float(f.low[m5].min()), float(f.close[m5][-1]), float(f.volume[m5].sum()))
        if unit == "S":
            lo = int(np.searchsorted(s.start, end - n, side="left"))
        elif unit == "D":
            sessions = np.unique(s.session[:hi]) if partial is None else np.unique(
                np.append(s.session[:hi], partial[1]))
            first = sessions[-n] if len(sessions) >= n else (sessions[0] if len(sessions) else 0)
            lo = int(np.searchsorted(s.session, first, side="left"))
        else:
            days = {"W": 7, "M": 31, "Y": 365}[unit] * n
            lo = int(np.searchsorted(s.start, end - days * 86400, side="left"))
        out = [(int(s.start[i]), int(s.session[i]), float(s.open[i]), float(s.high[i]), float(s.low[i]),
                float(s.close[i]), float(s.volume[i])) for i in range(lo, hi)]
        if partial is not None:
            out.append(partial)
        return out


def ny_date_of(epoch: int) -> date:
    """The America/New_York calendar date of an epoch second."""
    return datetime.fromtimestamp(epoch, NY).date()


def session_start(day: date) -> int:
    """09:30 America/New_York of `day` as epoch seconds."""
    return _ny_epoch(day, time(9, 30))


def add_days(d: date, n: int) -> date:
    return d + timedelta(days=n)
