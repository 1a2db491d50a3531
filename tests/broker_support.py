"""Helpers for the broker and paper-exchange tests (imported by those test modules; not a conftest).

- `DATA_DIR` / `require_data()`: the real bars (TRADEFLOW_DATA_DIR / core.settings); tests that read them skip
  with a clear reason when they are missing.
- `DecoderErrors`: a logging handler that records ERROR records of the IB client's decoder and eventkit, so that
  a message the client silently drops fails the test.
- `wait_until`: wait on a condition with a timeout (never sleep to wait).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo


from tests.data import require_bars

NY = ZoneInfo("America/New_York")
START = datetime(2026, 3, 2, 10, 0, tzinfo=NY)
"""Default exchange clock for tests: a Monday with 5-minute bars for AAPL, TSLA and SMH."""


def require_data() -> Path:
    """The bars folder, or a skip when its 5-minute SMH file (the conformance tests' data) is missing."""
    return require_bars("5m/SMH.csv")


DECODER_LOGGERS = ("ib_insync.Decoder", "ib_async.Decoder", "ib_insync.decoder", "ib_async.decoder",
                   "eventkit.event", "ib_insync.client", "ib_async.client")


class DecoderErrors(logging.Handler):
    """Collects ERROR records from the client's decoder/eventkit loggers (and the client's own decode errors)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if record.name.endswith(".client") and ("API connection failed" in msg or "Peer closed" in msg
                                                 or "Make sure API port" in msg):
            return  # expected in connection-failure tests
        self.records.append(record)

    def install(self) -> "DecoderErrors":
        for name in DECODER_LOGGERS:
            logging.getLogger(name).addHandler(self)
        return self

    def remove(self) -> None:
        for name in DECODER_LOGGERS:
            logging.getLogger(name).removeHandler(self)

    def messages(self) -> list[str]:
        return [f"{r.name}: {r.getMessage()}" + (f"\n{r.exc_text}" if r.exc_text else "") for r in self.records]


def wait_until(cond: Callable[[], bool], timeout: float = 5.0, what: str = "condition",
               poll: Callable[[float], object] | None = None) -> None:
    """Wait until `cond()` is true; `poll(seconds)` lets an IB client process its socket meanwhile."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        if poll:
            try:
                poll(0.02)
            except ConnectionError:  # the client reports the very disconnect being waited for
                pass
        else:
            time.sleep(0.01)
