"""A store of complete hourly bars per symbol, kept up to date from the Broker, and the timing of hourly bars.

Layout: ``<root>/1h/<SYMBOL>.csv`` in the format of shared/data/bars (``timestamp,open,high,low,close,volume``,
bar START in ISO 8601 with its New York offset), so :mod:`core.bars` reads it and ``tradeflow train --data-dir
<state>/bars`` trains on it. ``root`` is ``<state dir>/bars`` (:func:`store_root`).

What is stored: only bars that were complete when fetched (:func:`complete_bars`), contiguous from the first to
the last (a fetch that cannot join the stored bars is dropped, never stored with a hole).

Updating (:meth:`BarStore.update`) asks the Broker only for what is missing:
- forward: the bars since the last stored bar's session, in one request of ``N D`` (N = calendar days since then
  + 1, which covers at least that many sessions) when that is at most 7 days, else in ``1 M`` chunks going back
  from now until they reach the stored bars;
- backward: when the store starts after ``need_from``, ``1 M`` chunks going back from the first stored bar until
  ``need_from`` or until the Broker has nothing older (IB error 162 "query returned no data", or no bars).
``1 M`` with ``1 hour`` bars is a combination IB's step-size table allows. Every request counts against
``max_requests``; IBBroker paces requests within IB's limit (60 in 10 minutes) as well. A normal 5-minute run
makes one request per symbol; a first run backfills ``MIN_HISTORY_WEEKS`` in about 9 requests.

Writers lock ``<SYMBOL>.csv.lock`` and replace the file atomically; readers never see half a file.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
from filelock import FileLock

from core.bars import BarsError, bars_path, read_bars_csv
from core.broker import BARS_COLUMNS, NY, Broker, IBError, empty_bars
from core.features import validate_bars

__all__ = ["MAX_BAR_AGE", "BarStore", "BarsError", "StoreUpdate", "bar_ends", "bars_problem", "complete_bars",
           "next_bar_end", "session_time_between", "store_root"]

HOUR = timedelta(hours=1)
MAX_BAR_AGE = timedelta(minutes=70)
"""Session time allowed between the end of the last complete hourly bar and `as_of` (one bar + 10 minutes)."""

CHUNK = "1 M"
CHUNK_DAYS = 28
"""A ``1 M`` request covers at least this many calendar days (IB: a month; the paper exchange: 31 days)."""


def store_root(state_dir: str | Path) -> Path:
    """The bar store's folder in a state directory."""
    return Path(state_dir) / "bars"


# --------------------------------------------------------------------------------------------------------------
# hourly bar timing (pure)


def _sessions_for(starts) -> list:
    from core.calendar import sessions

    if len(starts) == 0:
        return []
    first, last = starts[0].astimezone(NY).date(), starts[-1].astimezone(NY).date()
    return sessions(first, last)


def bar_ends(starts, sessions=None) -> list[datetime]:
    """The end of each hourly bar: ``min(start + 1 hour, next bar's start in the same session, session close)``.

    This holds on both hourly grids (09:30, 10:30 … and IB's 09:30 (30 minutes), 10:00, 11:00 …) and on early
    closes. The one conservative case: IB's 09:30 bar, while it is the last bar returned, is taken to end at
    10:30 (it ends at 10:00), so a run between 10:00 and the moment IB returns the 10:00 bar does not use it.

    Args:
        starts: bar start times (aware, ascending), e.g. a bars DataFrame's index.
        sessions: the NYSE sessions covering those dates (default: from `core.calendar`).

    Raises:
        ValueError: a naive time, or a bar that starts on a date that is not a session.
    """
    starts = [pd.Timestamp(t).to_pydatetime() for t in starts]
    for t in starts:
        if t.tzinfo is None:
            raise ValueError(f"bar start {t!r} must be timezone-aware")
    closes = {s.date: s.close for s in (_sessions_for(starts) if sessions is None else sessions)}
    out = []
    for i, t in enumerate(starts):
        close = closes.get(t.astimezone(NY).date())
        if close is None:
            raise ValueError(f"bar at {t.isoformat()} is not in an NYSE session")
        end = min(t + HOUR, close)
        if i + 1 < len(starts) and closes.get(starts[i + 1].astimezone(NY).date()) == close:
            end = min(end, starts[i + 1])
        out.append(end)
    return out


def next_bar_end(starts) -> datetime | None:
    """The earliest time the next hourly bar after the stored ones can have ended (aware), or None when that cannot
    be told (fewer than one stored bar).

    A new hourly bar completes once an hour, so a 5-minute run only needs to ask the Broker when this time has
    passed; this keeps a session's historical requests near 7 a symbol instead of 78 (IB's pacing: about 60
    historical requests in 10 minutes). The grid is read from the stored starts (IB's 09:30, 10:00, 11:00 …: the
    session's first bar ends after 30 minutes; other sources' 09:30, 10:30 …: after an hour).
    """
    from core.calendar import next_session, session_on

    starts = [pd.Timestamp(t).to_pydatetime().astimezone(NY) for t in starts]
    if not starts:
        return None
    # bars starting at hh:30 after the open say the source's grid is 09:30, 10:30 …; otherwise (IB's grid, or not
    # yet known) take the earlier end, so that a bar is never waited for longer than needed
    half_past = any(t.minute == 30 and (t.hour, t.minute) != (9, 30) for t in starts[-20:])
    first_len = HOUR if half_past else timedelta(minutes=30)
    last = starts[-1]
    session = session_on(last.date())
    if session is None:
        return None
    end = min(last + (first_len if last == session.open else HOUR), session.close)
    if end >= session.close:
        nxt = next_session(session.date)
        return min(nxt.open + first_len, nxt.close)
    return min(end + HOUR, session.close)


def complete_bars(bars: pd.DataFrame, cutoff: datetime) -> pd.DataFrame:
    """The bars that had ended at ``cutoff`` (aware): the bar in progress, and anything later, dropped.

    A flow passes ``cutoff = min(as_of, broker clock)``: a run that starts a second early (its clock before
    ``as_of``) does not take the bar ending at ``as_of`` for complete.
    """
    if cutoff.tzinfo is None:
        raise ValueError("cutoff must be timezone-aware")
    if bars.empty:
        return bars
    tail_from = max(0, int(bars.index.searchsorted(pd.Timestamp(cutoff) - 2 * HOUR)))
    tail = bars.iloc[tail_from:]
    keep = tail[[e <= cutoff for e in bar_ends(tail.index)]] if len(tail) else tail
    return pd.concat([bars.iloc[:tail_from], keep]) if tail_from else keep


def session_time_between(start: datetime, end: datetime, sessions) -> timedelta:
    """Regular-session time between two aware instants (0 when ``end <= start``), over the given sessions."""
    total = timedelta(0)
    for s in sessions:
        lo, hi = max(start, s.open), min(end, s.close)
        if hi > lo:
            total += hi - lo
    return total


def bars_problem(bars: pd.DataFrame, as_of: datetime, max_age: timedelta = MAX_BAR_AGE) -> str | None:
    """Why complete hourly ``bars`` cannot be used at ``as_of`` (None when they are fresh): none at all, or the
    last one ended more than ``max_age`` of session time before ``as_of`` (the data stopped).

    With the default (an hourly bar + 10 minutes): at 11:29 on the 09:30, 10:30 … grid the last complete bar is
    the 09:30 bar (ended 10:30: 59 minutes); at 10:05 it is the previous session's last bar (ended at that close:
    35 minutes of session time); at 11:45 with nothing after yesterday's close, 135 minutes: stale."""
    from core.calendar import sessions

    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    if bars.empty:
        return "no complete hourly bar"
    last_end = bar_ends(bars.index[-2:])[-1]
    age = session_time_between(last_end, as_of, sessions(last_end.astimezone(NY).date(), as_of.astimezone(NY).date()))
    if age > max_age:
        return (f"stale bars: the last complete hourly bar ended {last_end.isoformat()}, "
                f"{age.total_seconds() / 60:.0f} minutes of session time before {as_of.isoformat()} "
                f"(at most {max_age.total_seconds() / 60:.0f})")
    return None


# --------------------------------------------------------------------------------------------------------------
# the store


@dataclass(frozen=True)
class StoreUpdate:
    """What one update did: ``requests`` made, bars ``added`` (new timestamps), the store's ``first``/``last``
    bar start afterwards, whether it now reaches back to ``need_from`` (``complete``), and a ``note``."""

    symbol: str
    requests: int
    added: int
    first: datetime | None
    last: datetime | None
    complete: bool
    note: str = ""


class BarStore:
    """Complete hourly bars per symbol under ``root`` (module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, symbol: str) -> Path:
        """``<root>/1h/<SYMBOL>.csv``."""
        return bars_path(self.root, "1h", symbol)

    def load(self, symbol: str) -> pd.DataFrame:
        """The stored bars (the Broker's bars shape; empty when none are stored).

        Raises:
            core.bars.BarsError: the file is damaged (the message names the file and the first bad row).
        """
        p = self.path(symbol)
        if not p.exists():
            return empty_bars()
        df = read_bars_csv(p)
        df.index = df.index.tz_convert(NY)
        return df

    def save(self, symbol: str, bars: pd.DataFrame) -> None:
        """Replace the stored bars of ``symbol`` atomically (call under :meth:`lock`)."""
        p = self.path(symbol)
        p.parent.mkdir(parents=True, exist_ok=True)
        out = bars[list(BARS_COLUMNS)].copy()
        out.insert(0, "timestamp", [t.isoformat() for t in bars.index])
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
        with os.fdopen(fd, "w") as f:
            out.to_csv(f, index=False)
        os.replace(tmp, p)

    def lock(self, symbol: str) -> FileLock:
        """The writer lock of one symbol's file."""
        p = self.path(symbol)
        p.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(p) + ".lock", timeout=120)

    def update(self, broker: Broker, symbol: str, cutoff: datetime, need_from: datetime,
               max_requests: int = 12) -> StoreUpdate:
        """Fetch what is missing (module docstring) and store the bars complete at ``cutoff``.

        Args:
            broker: a connected Broker.
            cutoff: bars that had not ended by then are not stored (aware; a flow passes min(as_of, broker clock)).
            need_from: how far back the store should reach (aware).
            max_requests: historical requests this update may make.

        Raises:
            core.bars.BarsError: the stored file is damaged.
            core.features.FeatureInputError: the Broker's bars are bad (NaN, non-positive prices, high below low):
                nothing is stored.
            core.broker.BrokerError: the Broker failed (other than "no data").
        """
        if cutoff.tzinfo is None or need_from.tzinfo is None:
            raise ValueError("cutoff and need_from must be timezone-aware")
        with self.lock(symbol):
            stored = self.load(symbol)
            budget = [max_requests]
            notes: list[str] = []
            since = stored.index[-1].to_pydatetime() if len(stored) else need_from
            due = next_bar_end(stored.index) if len(stored) else None
            if due is not None and due > cutoff:  # no new bar can have completed: nothing to ask the Broker
                fresh, exhausted = empty_bars(), False
            else:
                fresh, exhausted = self._fetch_back(broker, symbol, None, since, cutoff, budget)
            if len(stored) and len(fresh) and fresh.index[0] > stored.index[-1]:
                notes.append(f"the bars since {since.isoformat()} could not be fetched whole within "
                             f"{max_requests} requests; nothing stored from them")
                fresh = empty_bars()
            merged = _merge(stored, fresh)
            if len(stored):
                exhausted = False  # the forward fetch says nothing about older bars
            if len(merged) and merged.index[0] > need_from and budget[0] > 0 and not exhausted:
                older, exhausted = self._fetch_back(broker, symbol, merged.index[0].to_pydatetime(), need_from,
                                                    cutoff, budget)
                merged = _merge(older, merged)
            merged = complete_bars(merged, cutoff)
            if len(merged):
                validate_bars(merged)  # NaN, non-positive prices, high < low: never stored
            added = len(merged.index.difference(stored.index))
            if not merged.equals(stored):
                self.save(symbol, merged)
            first = merged.index[0].to_pydatetime() if len(merged) else None
            last = merged.index[-1].to_pydatetime() if len(merged) else None
            complete = first is not None and (first <= need_from or exhausted)
            if exhausted and first is not None and first > need_from:
                notes.append(f"the Broker has no bars before {first.isoformat()}")
            if not complete and not exhausted:
                notes.append(f"history reaches back to {first.isoformat() if first else 'nothing'}, not yet "
                             f"{need_from.isoformat()} (request budget {max_requests} used up)")
            return StoreUpdate(symbol.upper(), max_requests - budget[0], added, first, last, complete,
                               "; ".join(notes))

    @staticmethod
    def _fetch_back(broker: Broker, symbol: str, end: datetime | None, until: datetime, cutoff: datetime,
                    budget: list[int]) -> tuple[pd.DataFrame, bool]:
        """Chunks ending at ``end`` (None: now), going back until a bar starts at or before ``until``.

        Returns (bars, exhausted): exhausted when the Broker had nothing older."""
        parts: list[pd.DataFrame] = []
        exhausted = False
        while budget[0] > 0:
            days = ((end or cutoff).astimezone(NY).date() - until.astimezone(NY).date()).days + 1
            duration = f"{max(days, 1)} D" if days <= 7 else CHUNK
            budget[0] -= 1
            try:
                df = broker.historical_bars(symbol, "1 hour", duration, end=end)
            except IBError as exc:
                if exc.code == 162 and "no data" in exc.message.lower():
                    df = empty_bars()
                else:
                    raise
            if end is not None:
                df = df[df.index < end]
            if df.empty:
                exhausted = True
                break
            parts.append(df)
            if df.index[0] <= until:
                break
            end = df.index[0].to_pydatetime()
        if not parts:
            return empty_bars(), exhausted
        return _merge(*reversed(parts)), exhausted


def _merge(*frames: pd.DataFrame) -> pd.DataFrame:
    """Concatenate bars; for a timestamp present more than once the LAST frame's bar wins."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_bars()
    out = pd.concat(frames)
    out = out[~out.index.duplicated(keep="last")].sort_index()
    out.index.name = "timestamp"
    return out[list(BARS_COLUMNS)].astype("float64")

