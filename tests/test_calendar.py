"""The NYSE calendar and the deployments' event times (core.calendar, `tradeflow schedule`)."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest

from core.calendar import (
    NY,
    event_times,
    is_last_session_of_month,
    next_session,
    previous_session,
    session_for,
    session_on,
    sessions,
)
from deployments.cli import main


def _by_day(events):
    return Counter((e.time.date(), e.deployment) for e in events)


def _times(events, deployment):
    return [e.time for e in events if e.deployment == deployment]


def test_full_session_has_78_signal_runs_and_the_close_events():
    events = event_times("2026-11-23", "2026-11-23")
    counts = _by_day(events)
    day = dt.date(2026, 11, 23)
    assert counts[(day, "mtf-signal")] == 78
    signals = _times(events, "mtf-signal")
    assert signals[0] == dt.datetime(2026, 11, 23, 9, 35, tzinfo=NY)
    assert signals[-1] == dt.datetime(2026, 11, 23, 16, 0, tzinfo=NY)
    assert all(b - a == dt.timedelta(minutes=5) for a, b in zip(signals, signals[1:]))
    assert _times(events, "equity-snapshot") == [dt.datetime(2026, 11, 23, 9, 30, tzinfo=NY)]
    assert _times(events, "ema-entry") == [dt.datetime(2026, 11, 23, 15, 55, tzinfo=NY)]
    assert _times(events, "ema-update") == [dt.datetime(2026, 11, 23, 16, 0, tzinfo=NY)]
    assert _times(events, "reconciliation") == [dt.datetime(2026, 11, 23, 17, 0, tzinfo=NY)]
    assert _times(events, "retrain") == []


def test_thanksgiving_week_2026():
    events = event_times("2026-11-23", "2026-11-27")
    assert not [e for e in events if e.time.date() == dt.date(2026, 11, 26)]
    friday = [e for e in events if e.time.date() == dt.date(2026, 11, 27)]
    assert session_on("2026-11-27").early_close
    assert _times(friday, "ema-entry") == [dt.datetime(2026, 11, 27, 12, 55, tzinfo=NY)]
    assert _times(friday, "ema-update") == [dt.datetime(2026, 11, 27, 13, 0, tzinfo=NY)]
    signals = _times(friday, "mtf-signal")
    assert len(signals) == 42
    assert signals[-1] == dt.datetime(2026, 11, 27, 13, 0, tzinfo=NY)
    assert _times(friday, "reconciliation") == [dt.datetime(2026, 11, 27, 17, 0, tzinfo=NY)]


def test_special_closure_2025_01_09():
    assert session_on("2025-01-09") is None
    assert [s.date for s in sessions("2025-01-08", "2025-01-10")] == [dt.date(2025, 1, 8), dt.date(2025, 1, 10)]
    assert not [e for e in event_times("2025-01-06", "2025-01-10") if e.time.date() == dt.date(2025, 1, 9)]
    assert previous_session("2025-01-10").date == dt.date(2025, 1, 8)
    assert next_session("2025-01-08").date == dt.date(2025, 1, 10)


def test_early_close_2025_07_03():
    events = event_times("2025-07-03", "2025-07-03")
    assert _times(events, "ema-entry") == [dt.datetime(2025, 7, 3, 12, 55, tzinfo=NY)]
    assert _times(events, "ema-update") == [dt.datetime(2025, 7, 3, 13, 0, tzinfo=NY)]
    assert len(_times(events, "mtf-signal")) == 42
    assert session_on("2025-07-04") is None


@pytest.mark.parametrize(
    ("before", "after", "offset_before", "offset_after"),
    [
        ("2026-03-06", "2026-03-09", -5, -4),  # DST starts Sunday 2026-03-08
        ("2026-10-30", "2026-11-02", -4, -5),  # DST ends Sunday 2026-11-01
    ],
)
def test_dst_changes_keep_new_york_wall_clock(before, after, offset_before, offset_after):
    events = event_times(before, after)
    for e in events:
        assert e.time.tzinfo is not None
    opens = _times(events, "equity-snapshot")
    assert [o.strftime("%H:%M") for o in opens] == ["09:30", "09:30"]
    assert [o.utcoffset() for o in opens] == [dt.timedelta(hours=offset_before), dt.timedelta(hours=offset_after)]
    # the UTC time of the open moves by an hour across the change
    utc_hours = [o.astimezone(dt.timezone.utc).hour for o in opens]
    assert utc_hours[0] != utc_hours[1]
    assert Counter(e.deployment for e in events)["mtf-signal"] == 2 * 78


def test_month_ending_on_a_weekend_retrains_on_its_last_session():
    # January 2026 ends on Saturday the 31st: its last session is Friday the 30th
    events = event_times("2026-01-26", "2026-02-06")
    assert _times(events, "retrain") == [dt.datetime(2026, 1, 30, 18, 0, tzinfo=NY)]
    assert is_last_session_of_month(session_on("2026-01-30"))
    assert not is_last_session_of_month(session_on("2026-01-29"))


def test_retrain_on_the_last_day_of_a_range_looks_past_it():
    assert _times(event_times("2026-11-30", "2026-11-30"), "retrain") == [dt.datetime(2026, 11, 30, 18, 0, tzinfo=NY)]


def test_events_are_sorted_and_filtered():
    events = event_times("2026-11-23", "2026-11-27")
    assert events == sorted(events)
    only = event_times("2026-11-23", "2026-11-27", deployment="ema-entry")
    assert [e.deployment for e in only] == ["ema-entry"] * 4


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="unknown deployment 'nope'"):
        event_times("2026-11-23", "2026-11-27", deployment="nope")
    with pytest.raises(ValueError, match="end 2026-11-01 is before start 2026-11-23"):
        sessions("2026-11-23", "2026-11-01")
    with pytest.raises(ValueError, match="start must be a date"):
        sessions("23/11/2026", "2026-11-27")
    with pytest.raises(ValueError, match="as_of must be a timezone-aware"):
        session_for(dt.datetime(2026, 11, 23, 10, 0))


def test_session_for_uses_the_new_york_date():
    # 02:00 UTC on the 24th is still the evening of the 23rd in New York
    as_of = dt.datetime(2026, 11, 24, 2, 0, tzinfo=dt.timezone.utc)
    assert session_for(as_of).date == dt.date(2026, 11, 23)
    assert session_for(dt.datetime(2026, 11, 26, 12, 0, tzinfo=NY)) is None


def test_schedule_command_prints_one_sorted_event_per_line(capsys):
    assert main(["schedule", "--from", "2026-11-23", "--to", "2026-11-27"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert not [line for line in lines if "2026-11-26" in line]
    assert "ema-entry 2026-11-27T12:55:00-05:00" in lines
    assert "ema-update 2026-11-27T13:00:00-05:00" in lines
    assert sum(1 for line in lines if line.startswith("mtf-signal 2026-11-27")) == 42
    parsed = [dt.datetime.fromisoformat(line.split(" ")[1]) for line in lines]
    assert parsed == sorted(parsed)
    assert len(lines) == 3 * 78 + 42 + 4 * 5  # three full sessions, one early close, 5 other events each


def test_schedule_command_rejects_bad_dates(capsys):
    assert main(["schedule", "--from", "2026-11-30", "--to", "2026-11-01"]) == 2
    assert "before start" in capsys.readouterr().err
