"""The paper exchange's clock: stands still until set or stepped, or runs at a chosen speed from a start.

Times are timezone-aware datetimes at the edges and float epoch seconds inside. The running clock reads the
host's monotonic clock (this is the exchange simulating time, not decision code).
"""

from __future__ import annotations

import time as _time
from datetime import datetime, timezone


def _aware(t: datetime) -> datetime:
    if t.tzinfo is None:
        raise ValueError("the exchange clock needs a timezone-aware datetime")
    return t


class ExchangeClock:
    """Exchange time. `speed` None or 0 means stopped (moved only by `set`/`step`); `speed` X runs X exchange
    seconds per real second from the time it was set."""

    def __init__(self, start: datetime, speed: float | None = None):
        self._base = _aware(start).timestamp()
        self._mono = _time.monotonic()
        self._speed = float(speed or 0.0)

    @property
    def speed(self) -> float:
        """Exchange seconds per real second (0 when stopped)."""
        return self._speed

    def now(self) -> float:
        """Exchange time, epoch seconds."""
        if self._speed:
            return self._base + (_time.monotonic() - self._mono) * self._speed
        return self._base

    def now_dt(self) -> datetime:
        """Exchange time as an aware UTC datetime."""
        return datetime.fromtimestamp(self.now(), timezone.utc)

    def set(self, t: datetime | float) -> None:
        """Jump to `t` (aware datetime or epoch seconds); a running clock keeps running from there."""
        self._base = _aware(t).timestamp() if isinstance(t, datetime) else float(t)
        self._mono = _time.monotonic()

    def step(self, seconds: float) -> None:
        """Move forward by `seconds` of exchange time."""
        self.set(self.now() + float(seconds))

    def run(self, speed: float) -> None:
        """Run at `speed` exchange seconds per real second from now (0 stops)."""
        self._base = self.now()
        self._mono = _time.monotonic()
        self._speed = float(speed)

    def pause(self) -> None:
        """Stop the clock where it is."""
        self.run(0.0)
