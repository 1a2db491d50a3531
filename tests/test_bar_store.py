"""The hourly bar store (core.bar_store) fed by the real IBBroker from the paper exchange."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from core.bar_store import BarStore, complete_bars
from core.bars import BarsError
from core.calendar import NY
from core.ib_broker import IBBroker
from core.paper_exchange import AdminClient
from tests.broker_support import START
from tests.mtf_support import event_loop_for_ib  # noqa: F401

CLOCK = START + timedelta(minutes=5)  # 2026-03-02 10:05: the 09:30 hourly bar is in progress


@pytest.fixture
def broker(exchange, event_loop_for_ib):  # noqa: F811
    with IBBroker(client_id=62) as b:
        yield b


@pytest.fixture
def admin(exchange) -> AdminClient:  # noqa: F811
    return AdminClient(exchange.admin_port)


def test_backfill_then_only_what_is_missing(broker, admin, tmp_path):
    store = BarStore(tmp_path / "bars")
    first = store.update(broker, "AAPL", CLOCK, datetime(2025, 9, 1, tzinfo=NY))
    bars = store.load("AAPL")
    assert first.complete and first.requests >= 6 and bars.index[0] <= datetime(2025, 9, 1, 9, 30, tzinfo=NY)
    assert bars.index[-1] == datetime(2026, 2, 27, 15, 30, tzinfo=NY)  # the 09:30 bar in progress is not stored
    assert bars.index.is_unique and bars.index.is_monotonic_increasing and not bars.isna().any().any()
    assert store.path("AAPL").read_text().splitlines()[1].startswith("2025-")  # the shared data format

    again = store.update(broker, "AAPL", CLOCK, datetime(2025, 9, 1, tzinfo=NY))
    assert (again.requests, again.added) == (0, 0)  # no new hourly bar can have ended since: the Broker is not asked
    later = datetime(2026, 3, 2, 11, 35, tzinfo=NY)
    admin.set_clock(later)
    grown = store.update(broker, "AAPL", later, datetime(2025, 9, 1, tzinfo=NY))
    assert (grown.requests, grown.added) == (1, 2)  # the 09:30 and 10:30 bars, now complete
    assert store.load("AAPL").index[-1] == datetime(2026, 3, 2, 10, 30, tzinfo=NY)
    assert complete_bars(store.load("AAPL"), later - timedelta(hours=1)).index[-1] == datetime(
        2026, 3, 2, 9, 30, tzinfo=NY)  # a replay of an earlier as_of sees only what had ended by then


def test_history_stops_where_the_broker_has_none(broker, tmp_path):
    store = BarStore(tmp_path / "bars")
    upd = store.update(broker, "TSLA", CLOCK, datetime(2023, 1, 2, tzinfo=NY), max_requests=40)
    assert upd.complete and "no bars before 2023-07-26" in upd.note
    assert store.load("TSLA").index[0] == datetime(2023, 7, 26, 9, 30, tzinfo=NY)
    short = BarStore(tmp_path / "other").update(broker, "TSLA", CLOCK, datetime(2023, 1, 2, tzinfo=NY),
                                                max_requests=3)
    assert not short.complete and "budget" in short.note and short.requests == 3


def test_a_damaged_store_is_reported_not_used(broker, tmp_path):
    store = BarStore(tmp_path / "bars")
    store.update(broker, "AAPL", CLOCK, datetime(2026, 2, 1, tzinfo=NY))
    lines = store.path("AAPL").read_text().splitlines()
    lines[5] = lines[5].rsplit(",", 2)[0] + ",nan,100"  # a NaN close
    store.path("AAPL").write_text("\n".join(lines) + "\n")
    with pytest.raises(BarsError, match="NaN or non-positive price"):
        store.update(broker, "AAPL", CLOCK, datetime(2026, 2, 1, tzinfo=NY))


def test_the_next_bar_end_follows_each_grid_and_the_calendar():
    from core.bar_store import next_bar_end

    def t(day, hh, mm):
        return datetime(2026, 3, day, hh, mm, tzinfo=NY)

    ib = [t(2, 9, 30), t(2, 10, 0), t(2, 11, 0)]  # IB's grid: the first bar is 30 minutes long
    assert next_bar_end(ib[:1]) == t(2, 11, 0) and next_bar_end(ib) == t(2, 13, 0)
    other = [t(2, 9, 30), t(2, 10, 30)]
    assert next_bar_end(other[:1]) == t(2, 11, 0)  # grid not known yet: the earlier end
    assert next_bar_end(other) == t(2, 12, 30)
    assert next_bar_end([t(2, 14, 0), t(2, 15, 0)]) == t(3, 10, 0)  # after the close: the next session's first bar
    assert next_bar_end([t(6, 14, 30), t(6, 15, 30)]) == t(9, 10, 30)  # Friday -> Monday
    thanksgiving_eve = [datetime(2026, 11, 25, h, 0, tzinfo=NY) for h in (14, 15)]
    assert next_bar_end(thanksgiving_eve) == datetime(2026, 11, 27, 10, 0, tzinfo=NY)
    early = [datetime(2026, 11, 27, h, 0, tzinfo=NY) for h in (11, 12)]  # closes at 13:00
    assert next_bar_end(early) == datetime(2026, 11, 30, 10, 0, tzinfo=NY)
    assert next_bar_end([]) is None
