"""The kill switch: `tradeflow halt` stops every order path at once, `tradeflow resume` lifts it.

The switch is a file, `HALT` in the state directory, holding who halted, why and when (JSON). A file, not a
journal row, because it must be read on every order at the moment the order is sent (`core.orders`), by any
process, in microseconds, without waiting for the journal's writer lock. The journal's `controls` table keeps the
history of every halt and resume with who and why (strategies.md, "Kill switch": when on, no new order of any
kind leaves the system, except the exits an operator asks for).

Setting the switch writes the file first (the halt takes effect at once), then journals it; lifting it journals
first, then removes the file, so a failure while lifting leaves trading halted rather than the reverse. The HALT
file is the truth: a halt whose file cannot be written (a full or read-only state directory) is no halt and is
not journaled (`HaltError`, saying trading is NOT halted); a halt whose file was written stands even when the
journal cannot record it (`HaltNotJournaledError`, saying trading IS halted and what the journal lacks).
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
from dataclasses import dataclass
from pathlib import Path

from core.journal import UNAVAILABLE, Journal
from core.journal.server import HALT_FILE  # noqa: F401 - the file's name, for callers

JOURNAL_FILE = "journal.duckdb"
"""The journal's file name in the state directory (`core.settings.Settings.journal_path`)."""


class HaltError(RuntimeError):
    """The halt file could not be written: trading is NOT halted (nothing was journaled)."""


class ResumeError(RuntimeError):
    """The resume was journaled but the HALT file could not be removed: trading is STILL halted."""


class HaltNotJournaledError(RuntimeError):
    """Trading IS halted (the HALT file is in place) but the journal could not record the halt; `info` is it."""

    def __init__(self, message: str, info: "HaltInfo"):
        super().__init__(message)
        self.info = info


@dataclass(frozen=True)
class HaltInfo:
    """An active halt: who set it, why, and when (aware datetime; None for a switch that cannot be read, whose
    time is unknown)."""

    who: str
    reason: str
    at: dt.datetime | None

    def describe(self) -> str:
        when = self.at.isoformat() if self.at else "an unknown time"
        return f"trading halted by {self.who} at {when}: {self.reason}"


def operator() -> str:
    """The operator's name for the journal: the login name, or 'unknown' when the system has none."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (e.g. a container user without a passwd entry)
        return "unknown"


class KillSwitch:
    """The halt file of a state directory, or, on a host whose journal is another host's
    (TRADEFLOW_JOURNAL_SERVER, `core.journal.remote`), the server host's one file through its journal server: a
    halt on any host stops every order path on every host.

    Args:
        state_dir: the system's state directory (settings.state_dir); the file is `state_dir / "HALT"` (the
            journal's folder).
    """

    def __init__(self, state_dir: str | Path):
        self._file = Journal(Path(state_dir) / JOURNAL_FILE).halt_file()
        self.path = self._file.path

    def current(self) -> HaltInfo | None:
        """The active halt, or None when trading is allowed. An unreadable halt file, or a journal server that
        cannot be asked, counts as a halt (by 'unknown'): a damaged or unreachable switch must not let orders
        through."""
        try:
            raw = self._file.read()
        except OSError as exc:
            return HaltInfo(who="unknown", reason=f"the kill switch ({self.path}) cannot be read: {exc}", at=None)
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            return HaltInfo(who=str(data["who"]), reason=str(data["reason"]),
                            at=dt.datetime.fromisoformat(data["at"]))
        except (ValueError, KeyError, TypeError):
            return HaltInfo(who="unknown", reason=f"the halt file {self.path} is unreadable", at=None)

    def halt(self, journal: Journal, who: str, reason: str, at: dt.datetime) -> HaltInfo:
        """Halt trading now and journal it. Halting while halted replaces who/why (both are journaled).

        Raises:
            ValueError: empty `who` or `reason`, or naive `at`.
            HaltError: the HALT file could not be written (full or read-only state directory): NOT halted, nothing
                journaled, no temporary file left behind.
            HaltNotJournaledError: halted, but the journal could not record it (held, full disk).
        """
        if not who or not reason:
            raise ValueError("halt needs who and why (--reason)")
        if at.tzinfo is None:
            raise ValueError("at must be timezone-aware")
        info = HaltInfo(who=who, reason=reason, at=at)
        try:
            self._file.write(json.dumps({"who": who, "reason": reason, "at": at.isoformat()}))
        except OSError as exc:
            raise HaltError(f"trading is NOT halted: the halt file {self.path} cannot be written "
                            f"({exc.strerror or exc}). Free space in (or make writable) its folder, or reach the "
                            "journal server, then halt again; meanwhile stop the workers (Ctrl+C on `tradeflow "
                            "up`) to stop new runs")
        try:
            with journal.transaction() as tx:
                tx.record_control("halt", who, reason, at)
        except UNAVAILABLE as exc:
            raise HaltNotJournaledError(
                f"{info.describe()}: trading IS halted (the HALT file {self.path} is in place and every order path "
                f"refuses), but the journal could not record it ({type(exc).__name__}: {exc}); the HALT file holds "
                "who, why and when", info) from exc
        return info

    def resume(self, journal: Journal, who: str, reason: str, at: dt.datetime) -> HaltInfo | None:
        """Lift the halt (journaled first); returns the halt that was lifted, or None when none was on.

        Raises:
            core.journal.UNAVAILABLE errors: the journal could not record it (still halted).
            ResumeError: journaled, but the file could not be removed (still halted)."""
        was = self.current()
        with journal.transaction() as tx:
            tx.record_control("resume", who, reason, at, details={"lifted": was.describe() if was else None})
        try:
            self._file.remove()
        except OSError as exc:
            raise ResumeError(f"trading is STILL HALTED: the resume is journaled but the halt file {self.path} cannot "
                              f"be removed ({exc.strerror or exc}); make its folder writable (or reach the journal "
                              "server) and resume again") from exc
        return was
