"""Each deployment's Prefect schedules, generated from the NYSE calendar (`core.calendar.event_times`).

Representation (DESIGN.md lists the facts about Prefect 3.8 that shape it):

- One RRule string per schedule, in America/New_York, valid for a *window* of whole months: the first day of the
  month it is generated in through the last day of the 12th month (`window_for`). Every line of the string is read
  by Prefect as local wall-clock time, so each value below is written without a UTC offset:

      DTSTART:20261101T000000                                              the window's first day
      RRULE:FREQ=DAILY;UNTIL=20271031T235959;BYDAY=MO,TU,WE,TH,FR;BYHOUR=15;BYMINUTE=55;BYSECOND=0
      EXDATE:20261126T155500,20261127T155500,...                          holidays; the regular time of early closes
      RDATE:20261127T125500,...                                            the early close's time (12:55)

  The RRULE lines are the regular session's times on weekdays (several lines when the minutes differ by hour:
  mtf-signal's 09:35-09:55, 10:00-15:55 and 16:00). What the calendar removes from them is excluded by EXDATE
  (up to 3 times on a day) or by EXRULE lines that remove a whole date, or some hours x minutes of one date, e.g.
  a holiday from a 5-minute rule or the afternoon of an early close:

      EXRULE:FREQ=MINUTELY;UNTIL=20261126T235959;BYMONTH=11;BYMONTHDAY=26
      EXRULE:FREQ=DAILY;UNTIL=20261127T235959;BYMONTH=11;BYMONTHDAY=27;BYHOUR=14,15;BYMINUTE=0,5,...,55;BYSECOND=0

  An EXRULE names a month and day, not a year; it removes the one date because the window is shorter than a year
  (DTSTART bounds it before, UNTIL after). What the calendar adds (the times of an early close) is an RDATE. A
  deployment that does not fire every session (retrain: the month's last session) is RDATEs only.
- mtf-signal gets one schedule per hour of the day (8): Prefect evaluates at most 1,000 dates of a schedule each
  time it schedules (`MAX_ITERATIONS` of its RRuleSchedule), so one 5-minute schedule could never hold more than
  about 13 sessions ahead; per hour, each schedule has at most 12 runs a session, and the 100 days the scheduler
  may hold (about 70 sessions) stay under 1,000.
- `verify` evaluates every string the way the Prefect server does (`RRuleSchedule.to_rrule`) and compares the
  result with `event_times` over the whole window: a schedule that differs, or a string over Prefect's
  6,500-character cap, is refused before it reaches a server.

Staying valid as years pass: a schedule ends with its window (no run after UNTIL), so it must be regenerated
before then. `tradeflow deploy` regenerates it for the current month; the string only changes when the month
changes (or a setting such as the entry minute does), and `tradeflow deploy` only updates a deployment whose
schedules or settings differ (Prefect deletes a deployment's unstarted runs on every update). `tradeflow up`
re-runs it every evening at 20:00 New York time, when no event is near, so the window always reaches 11 to 12
months ahead; without `up`, run `tradeflow deploy` from cron at least monthly (e.g. `0 20 1 * *`), and
`tradeflow deploy --check` exits 1 when a deployed schedule ends within 60 days.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from core.calendar import NY, Event, event_times

TIMEZONE = "America/New_York"
RRULE_MAX_CHARS = 6500
"""Prefect refuses longer RRule strings (`prefect._internal.schemas.validators.MAX_RRULE_LENGTH`)."""
SCHEDULER_HORIZON = dt.timedelta(days=100)
"""How far ahead the Prefect scheduler creates runs at most (PREFECT_SERVER_SERVICES_SCHEDULER_MAX_SCHEDULED_TIME)."""
MAX_DATES_PER_EVALUATION = 1000
"""Prefect's RRuleSchedule yields at most this many dates each time the scheduler evaluates it."""
WINDOW_MONTHS = 12
EXDATE_MAX_PER_DAY = 3
"""More removed times on one date than this are removed by EXRULE lines instead of EXDATE values."""
_WEEKDAYS = "MO,TU,WE,TH,FR"


class ScheduleError(ValueError):
    """A generated schedule does not reproduce the calendar, or Prefect would refuse it; the message says which."""


@dataclass(frozen=True)
class Window:
    """The dates a generation covers, `start` to `end` inclusive (New York dates, whole months, < 1 year)."""

    start: dt.date
    end: dt.date

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"window end {self.end} is before its start {self.start}")
        if (self.end - self.start).days >= 365:
            raise ValueError(f"window {self.start}..{self.end} must be shorter than a year (EXRULE dates have no year)")

    @property
    def first(self) -> dt.datetime:
        """The window's first instant, aware (America/New_York)."""
        return dt.datetime.combine(self.start, dt.time(0, 0), tzinfo=NY)

    @property
    def last(self) -> dt.datetime:
        """The window's last instant, aware (America/New_York)."""
        return dt.datetime.combine(self.end, dt.time(23, 59, 59), tzinfo=NY)


def window_for(today: dt.date, months: int = WINDOW_MONTHS) -> Window:
    """The generation window for `today`: the first day of its month through the last day of the month
    `months - 1` later (12 months: always 11 to 12 months ahead, more than the scheduler's 100 days).

    Raises:
        ValueError: `months` outside 1..12.
    """
    if not 1 <= months <= 12:
        raise ValueError(f"months must be 1..12, got {months}")
    start = today.replace(day=1)
    y, m = divmod(start.month - 1 + months, 12)
    end = dt.date(start.year + y, m + 1, 1) - dt.timedelta(days=1)
    return Window(start, end)


@dataclass(frozen=True)
class ScheduleSpec:
    """One Prefect schedule of a deployment: its `slug` (unique within the deployment), the RRule string and
    its timezone."""

    slug: str
    rrule: str
    timezone: str = TIMEZONE

    def to_prefect(self, active: bool = True):
        """The schedule as Prefect's `DeploymentScheduleCreate` (`active=False`: registered but not firing)."""
        from prefect.client.schemas.actions import DeploymentScheduleCreate
        from prefect.client.schemas.schedules import RRuleSchedule

        return DeploymentScheduleCreate(schedule=RRuleSchedule(rrule=self.rrule, timezone=self.timezone),
                                        active=active, slug=self.slug)

    def to_yaml(self, active: bool = True) -> dict:
        """The schedule as an entry of a prefect.yaml deployment's `schedules`."""
        return {"rrule": self.rrule, "timezone": self.timezone, "active": active, "slug": self.slug}


def _stamp(t: dt.datetime | dt.date) -> str:
    if isinstance(t, dt.datetime):
        return t.astimezone(NY).strftime("%Y%m%dT%H%M%S")
    return t.strftime("%Y%m%d")


def _csv(values: Iterable[int]) -> str:
    return ",".join(str(v) for v in sorted(values))


def _by_minute_sets(times: Iterable[dt.time]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Group times of day into (hours, minutes) cross products: hours that share the same set of minutes."""
    minutes: dict[int, set[int]] = defaultdict(set)
    for t in times:
        minutes[t.hour].add(t.minute)
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for hour, ms in minutes.items():
        groups[tuple(sorted(ms))].append(hour)
    return sorted((tuple(sorted(hours)), ms) for ms, hours in groups.items())


def _exclusions(day: dt.date, removed: set[dt.time], base: set[dt.time], until: str) -> tuple[list[str], list[str]]:
    """(EXRULE lines, EXDATE values) removing the times `removed` of `day` from a rule producing `base` there."""
    if len(removed) <= EXDATE_MAX_PER_DAY:
        return [], [_stamp(dt.datetime.combine(day, t, tzinfo=NY)) for t in sorted(removed)]
    if removed == base:  # the whole date: one line (walking a date's minutes is cheap without BYHOUR)
        return [f"EXRULE:FREQ=MINUTELY;UNTIL={until};BYMONTH={day.month};BYMONTHDAY={day.day}"], []
    # part of the date: exact hours x minutes products (FREQ=DAILY expands only the listed times)
    head = f"EXRULE:FREQ=DAILY;UNTIL={until};BYMONTH={day.month};BYMONTHDAY={day.day}"
    return [f"{head};BYHOUR={_csv(hours)};BYMINUTE={_csv(ms)};BYSECOND=0"
            for hours, ms in _by_minute_sets(removed)], []


def _rrule_string(window: Window, regular: set[dt.time], targets: Sequence[dt.datetime]) -> str:
    """The RRule string producing exactly `targets` in `window`: weekday rules for the `regular` times, minus
    exclusions, plus RDATEs (no rule at all when `regular` is empty)."""
    until = f"{_stamp(window.end)}T235959"
    lines = [f"DTSTART:{_stamp(window.start)}T000000"]
    for hours, minutes in _by_minute_sets(regular):
        lines.append(f"RRULE:FREQ=DAILY;UNTIL={until};BYDAY={_WEEKDAYS};BYHOUR={_csv(hours)};"
                     f"BYMINUTE={_csv(minutes)};BYSECOND=0")
    wanted: dict[dt.date, set[dt.time]] = defaultdict(set)
    for t in targets:
        local = t.astimezone(NY)
        wanted[local.date()].add(local.time().replace(tzinfo=None))
    exrules: list[str] = []
    exdates: list[str] = []
    rdates: list[str] = []
    day = window.start
    while day <= window.end:
        base = regular if regular and day.weekday() < 5 else set()
        want = wanted.get(day, set())
        removed = base - want
        if removed:
            rules, dates = _exclusions(day, removed, base, f"{_stamp(day)}T235959")
            exrules += rules
            exdates += dates
        rdates += [_stamp(dt.datetime.combine(day, t, tzinfo=NY)) for t in sorted(want - base)]
        day += dt.timedelta(days=1)
    lines += exrules
    if rdates:
        lines.append("RDATE:" + ",".join(rdates))
    if exdates:
        lines.append("EXDATE:" + ",".join(exdates))
    return "\n".join(lines)


def _regular_times(events: Sequence[Event], window: Window) -> set[dt.time]:
    """The times of day of a regular session: the most common set of event times of a date, when the deployment
    fires on most weekdays of `window`; empty (RDATEs only) for a deployment that fires on few sessions."""
    per_day: dict[dt.date, set[dt.time]] = defaultdict(set)
    for e in events:
        local = e.time.astimezone(NY)
        per_day[local.date()].add(local.time().replace(tzinfo=None))
    if not per_day:
        return set()
    weekdays = sum(1 for i in range((window.end - window.start).days + 1)
                   if (window.start + dt.timedelta(days=i)).weekday() < 5)
    counts = Counter(frozenset(ts) for ts in per_day.values())
    pattern, n = counts.most_common(1)[0]
    return set(pattern) if n * 2 > weekdays else set()


def _hour_groups(regular: set[dt.time], max_per_day: int) -> list[set[dt.time]]:
    if len(regular) <= max_per_day:
        return [regular]
    by_hour: dict[int, set[dt.time]] = defaultdict(set)
    for t in regular:
        by_hour[t.hour].add(t)
    return [by_hour[h] for h in sorted(by_hour)]


def deployment_schedules(deployment: str, window: Window, entry_minutes_before_close: int = 5) -> list[ScheduleSpec]:
    """The schedules of `deployment` for `window`, verified against the calendar (see the module docstring).

    Args:
        deployment: a deployment of the registry (`core.registry`).
        window: the dates covered (`window_for(today)`).
        entry_minutes_before_close: settings.ema_entry_minutes_before_close (ema-entry's offset, minutes).

    Raises:
        ValueError: an unknown deployment.
        ScheduleError: the generated strings do not reproduce the calendar or exceed Prefect's limits.
    """
    events = event_times(window.start, window.end, deployment, entry_minutes_before_close)
    regular = _regular_times(events, window)
    # at most this many runs a session per schedule, so that 100 days of them stay under Prefect's 1,000 dates
    max_per_day = 14
    groups = _hour_groups(regular, max_per_day) if regular else [set()]
    specs: list[ScheduleSpec] = []
    assigned: dict[int, list[dt.datetime]] = defaultdict(list)
    hours_of = [{t.hour for t in g} for g in groups]
    for e in events:
        hour = e.time.astimezone(NY).hour
        index = next((i for i, hs in enumerate(hours_of) if hour in hs), 0)
        assigned[index].append(e.time)
    for i, group in enumerate(groups):
        slug = deployment if len(groups) == 1 else f"{deployment}-{min(t.hour for t in group):02d}h"
        specs.append(ScheduleSpec(slug=slug, rrule=_rrule_string(window, group, assigned[i])))
    verify(deployment, specs, window, entry_minutes_before_close)
    return specs


def schedule_times(spec: ScheduleSpec, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    """The times `spec` fires in [start, end] (aware), evaluated as the Prefect server does: its
    `RRuleSchedule.to_rrule` (values read as wall-clock times in the schedule's timezone), in America/New_York."""
    from prefect.server.schemas.schedules import RRuleSchedule

    rule = RRuleSchedule(rrule=spec.rrule, timezone=spec.timezone).to_rrule()
    return [t.astimezone(NY) for t in rule.between(start, end, inc=True)]


def verify(deployment: str, specs: Sequence[ScheduleSpec], window: Window, entry_minutes_before_close: int = 5) -> None:
    """Check that `specs` fire exactly at `event_times` of `deployment` over `window`, that each string fits
    Prefect's cap, and that no schedule has more dates in 100 days than Prefect evaluates at once.

    Raises:
        ScheduleError: naming the deployment and the first difference.
    """
    want = [e.time for e in event_times(window.start, window.end, deployment, entry_minutes_before_close)]
    got: list[dt.datetime] = []
    for spec in specs:
        if len(spec.rrule) > RRULE_MAX_CHARS:
            raise ScheduleError(f"{deployment} schedule {spec.slug}: {len(spec.rrule)} characters, over Prefect's "
                                f"{RRULE_MAX_CHARS}")
        times = schedule_times(spec, window.first, window.last)
        busiest = max((sum(1 for u in times if t <= u < t + SCHEDULER_HORIZON) for t in times[::50]), default=0)
        if busiest > MAX_DATES_PER_EVALUATION:
            raise ScheduleError(f"{deployment} schedule {spec.slug}: {busiest} runs in 100 days, over the "
                                f"{MAX_DATES_PER_EVALUATION} dates Prefect evaluates at once")
        got += times
    got.sort()
    if got != want:
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        duplicated = len(got) - len(set(got))
        raise ScheduleError(
            f"{deployment}: the generated schedules do not reproduce the calendar over {window.start}..{window.end}: "
            f"{len(missing)} missing (first {missing[0].isoformat() if missing else '-'}), {len(extra)} extra "
            f"(first {extra[0].isoformat() if extra else '-'}), {duplicated} duplicated")


def all_schedules(window: Window, entry_minutes_before_close: int = 5,
                  deployments: Iterable[str] | None = None) -> dict[str, list[ScheduleSpec]]:
    """`deployment_schedules` of every deployment (default: those that run, `core.registry.enabled_names`), by
    name."""
    from core.registry import enabled_names

    return {d: deployment_schedules(d, window, entry_minutes_before_close)
            for d in (deployments or enabled_names())}
