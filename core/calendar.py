"""The NYSE calendar: sessions, early closes, and each deployment's event times.

Sessions come from pandas-market-calendars (`NYSE`, its `schedule()` for open and close times): holidays,
early closes at 13:00 and special closures such as the national day of mourning on 2025-01-09 are its.
All times returned here are timezone-aware in America/New_York.

Event times per deployment (one per line of `tradeflow schedule`) come from the registry of strategies and their
deployments (`core.registry`: each entry's events relative to the session). The built-in ones:

=================  ==============================================================================================
preflight          09:00, half an hour before the open: the pre-open checklist
equity-snapshot    at the open (09:30)
mtf-signal         every 5 minutes from open + 5 min to the close inclusive: 78 on a full session, 42 on an early
                   close. Each is the END of a 5-minute bar (09:35 closes the 09:30 bar).
ema-entry          5 minutes before the close (15:55; 12:55 on an early close)
ema-update         at the close (16:00; 13:00 on an early close)
reconciliation     17:00 on every session evening. Why 17:00: an hour after the regular close (four after an early
                   close), so the day's fills and their commission reports have settled, and hours before IB's
                   nightly server reset and before midnight, after which `reqExecutions` no longer returns the
                   day's executions (DESIGN.md).
retrain            18:00 on the last session of each month (after that evening's reconciliation); a month that ends
                   on a weekend or holiday retrains on its last session.
=================  ==============================================================================================

Nothing here reads the clock: every function takes dates or a timezone-aware `as_of`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from zoneinfo import ZoneInfo

import pandas_market_calendars as mcal

NY = ZoneInfo("America/New_York")
"""Market timezone."""

REGULAR_CLOSE = dt.time(16, 0)
MTF_INTERVAL = dt.timedelta(minutes=5)



def __getattr__(name: str):
    """`DEPLOYMENTS`: the names of the deployments that run (`core.registry.enabled_names`), in the order of a
    session; read from the registry and TRADEFLOW_STRATEGIES when asked for."""
    if name == "DEPLOYMENTS":
        from core.registry import enabled_names

        return enabled_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class Session:
    """One NYSE session.

    Attributes:
        date: the session date (New York).
        open: regular-hours open, America/New_York (09:30).
        close: regular-hours close, America/New_York (16:00, or 13:00 on an early close).
    """

    date: dt.date
    open: dt.datetime
    close: dt.datetime

    @property
    def early_close(self) -> bool:
        """True when the session closes before 16:00 (13:00 on the days before/after some holidays)."""
        return self.close.timetz().replace(tzinfo=None) < REGULAR_CLOSE

    def bar_ends(self, interval: dt.timedelta = MTF_INTERVAL) -> list[dt.datetime]:
        """End times of the session's bars of `interval`, from open + interval to the close inclusive."""
        n = int((self.close - self.open) / interval)
        return [self.open + interval * (i + 1) for i in range(n)]


@dataclass(frozen=True, order=True)
class Event:
    """A scheduled event: `time` (America/New_York, aware) and the `deployment` that runs then."""

    time: dt.datetime
    deployment: str

    def __str__(self) -> str:
        return f"{self.deployment} {self.time.isoformat()}"


def _as_date(value: dt.date | str, name: str) -> dt.date:
    if isinstance(value, dt.datetime):
        raise TypeError(f"{name} must be a date, not a datetime ({value!r})")
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a date YYYY-MM-DD, got {value!r}") from None


def _require_aware(as_of: dt.datetime) -> dt.datetime:
    if not isinstance(as_of, dt.datetime) or as_of.tzinfo is None or as_of.utcoffset() is None:
        raise ValueError(f"as_of must be a timezone-aware datetime, got {as_of!r}")
    return as_of


@lru_cache(maxsize=1)
def _nyse() -> mcal.MarketCalendar:
    return mcal.get_calendar("NYSE")


@lru_cache(maxsize=64)
def _schedule(start: dt.date, end: dt.date) -> tuple[Session, ...]:
    frame = _nyse().schedule(start_date=start.isoformat(), end_date=end.isoformat())
    if frame.empty:
        return ()
    opens = frame["market_open"].dt.tz_convert(NY)
    closes = frame["market_close"].dt.tz_convert(NY)
    return tuple(
        Session(date=day.date(), open=o.to_pydatetime(), close=c.to_pydatetime())
        for day, o, c in zip(frame.index, opens, closes, strict=True)
    )


def sessions(start: dt.date | str, end: dt.date | str) -> list[Session]:
    """The NYSE sessions with `start <= date <= end` (both inclusive), in date order.

    Raises:
        ValueError: a date is malformed, or `end` is before `start`.
    """
    start_d, end_d = _as_date(start, "start"), _as_date(end, "end")
    if end_d < start_d:
        raise ValueError(f"end {end_d} is before start {start_d}")
    return list(_schedule(start_d, end_d))


def session_on(day: dt.date | str) -> Session | None:
    """The session on `day`, or None when the exchange is closed that day."""
    d = _as_date(day, "day")
    found = sessions(d, d)
    return found[0] if found else None


def session_for(as_of: dt.datetime) -> Session | None:
    """The session on `as_of`'s New York date (None on a non-session day), whatever the time of day.

    Raises:
        ValueError: `as_of` is naive.
    """
    return session_on(_require_aware(as_of).astimezone(NY).date())


def previous_session(day: dt.date | str) -> Session:
    """The last session strictly before `day` (searches up to 30 days back; NYSE never closes that long)."""
    d = _as_date(day, "day")
    found = sessions(d - dt.timedelta(days=30), d - dt.timedelta(days=1))
    if not found:  # pragma: no cover - cannot happen on the NYSE calendar
        raise LookupError(f"no NYSE session in the 30 days before {d}")
    return found[-1]


def next_session(day: dt.date | str) -> Session:
    """The first session strictly after `day` (searches up to 30 days ahead)."""
    d = _as_date(day, "day")
    found = sessions(d + dt.timedelta(days=1), d + dt.timedelta(days=30))
    if not found:  # pragma: no cover - cannot happen on the NYSE calendar
        raise LookupError(f"no NYSE session in the 30 days after {d}")
    return found[0]


def is_last_session_of_month(session: Session) -> bool:
    """True when no later session falls in the same calendar month."""
    return next_session(session.date).date.month != session.date.month


def session_events(
    session: Session, entry_minutes_before_close: int = 5, is_month_end: bool | None = None,
    deployments: Sequence[str] | None = None,
) -> list[Event]:
    """The events of every deployment on one session, sorted by time then deployment name.

    Args:
        session: the session.
        entry_minutes_before_close: minutes before the close at which `ema-entry` fires (strategies.md: 5).
        is_month_end: whether this is the month's last session (computed when None).
        deployments: which deployments (names in `core.registry`); default: those that run
            (`core.registry.enabled_names`).

    Raises:
        ValueError: an unknown deployment, `entry_minutes_before_close` not positive.
    """
    from core.registry import default_registry

    if entry_minutes_before_close <= 0:
        raise ValueError(f"entry_minutes_before_close must be positive, got {entry_minutes_before_close}")
    registry = default_registry()
    names = _deployments(deployments)
    month_end = is_last_session_of_month(session) if is_month_end is None else is_month_end
    values = {"ema_entry_minutes_before_close": entry_minutes_before_close}
    events = [Event(t, name) for name in names for t in registry.deployment(name).times(session, month_end, values)]
    return sorted(events)


def _deployments(deployments: Sequence[str] | None) -> tuple[str, ...]:
    from core.registry import default_registry, enabled_names

    if deployments is None:
        return enabled_names()
    for name in deployments:
        default_registry().deployment(name)  # raises naming the known ones
    return tuple(deployments)


def event_times(
    start: dt.date | str,
    end: dt.date | str,
    deployment: str | None = None,
    entry_minutes_before_close: int = 5,
    deployments: Sequence[str] | None = None,
) -> list[Event]:
    """Every deployment's events on the sessions from `start` to `end` inclusive, sorted by time then name.

    Args:
        start, end: first and last date (New York), inclusive.
        deployment: only this deployment's events (any deployment of the registry, running or not); when None,
            those of `deployments` (default: the deployments that run).
        entry_minutes_before_close: see `session_events`.

    Raises:
        ValueError: an unknown deployment, malformed dates, or `end` before `start`.
    """
    names = _deployments([deployment] if deployment is not None else deployments)
    days = sessions(start, end)
    if not days:
        return []
    # one look past the range decides whether its last session ends a month
    after = next_session(days[-1].date)
    events: list[Event] = []
    for i, s in enumerate(days):
        following = days[i + 1] if i + 1 < len(days) else after
        events += session_events(s, entry_minutes_before_close, following.date.month != s.date.month, names)
    return sorted(events)
