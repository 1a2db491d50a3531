"""The kill switch: `tradeflow halt` stops every order path at once, `tradeflow resume` lifts it.

The switch is a file, `HALT` in the state directory, holding who halted, why and when (JSON). A file, not a
journal row, because it must be read on every order at the moment the order is sent (`core.orders`), by any
process, in microseconds, without waiting for the journal's writer lock. The journal's `controls` table keeps the
history of every halt and resume with who and why (strategies.md, "Kill switch": when on, no new order of any
kind leaves the system, except the exits an operator asks for).

Setting the switch writes the file first (the halt takes effect at once), then journals it; lifting it journals
first, then removes the file, so a failure while lifting leaves trading halted rather than the reverse.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
from dataclasses import dataclass
from pathlib import Path

from core.journal import Journal

HALT_FILE = "HALT"


@dataclass(frozen=True)
class HaltInfo:
    """An active halt: who set it, why, and when (aware datetime)."""

    who: str
    reason: str
    at: dt.datetime

    def describe(self) -> str:
        return f"trading halted by {self.who} at {self.at.isoformat()}: {self.reason}"


def operator() -> str:
    """The operator's name for the journal: the login name, or 'unknown' when the system has none."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (e.g. a container user without a passwd entry)
        return "unknown"


class KillSwitch:
    """The halt file of a state directory.

    Args:
        state_dir: the system's state directory (settings.state_dir); the file is `state_dir / "HALT"`.
    """

    def __init__(self, state_dir: str | Path):
        self.path = Path(state_dir) / HALT_FILE

    def current(self) -> HaltInfo | None:
        """The active halt, or None when trading is allowed. An unreadable halt file counts as a halt (by
        'unknown'): a damaged switch must not let orders through."""
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw)
            return HaltInfo(who=str(data["who"]), reason=str(data["reason"]),
                            at=dt.datetime.fromisoformat(data["at"]))
        except (ValueError, KeyError, TypeError):
            return HaltInfo(who="unknown", reason=f"the halt file {self.path} is unreadable",
                            at=dt.datetime.fromtimestamp(self.path.stat().st_mtime, dt.timezone.utc))

    def halt(self, journal: Journal, who: str, reason: str, at: dt.datetime) -> HaltInfo:
        """Halt trading now and journal it. Halting while halted replaces who/why (both are journaled).

        Raises:
            ValueError: empty `who` or `reason`, or naive `at`.
        """
        if not who or not reason:
            raise ValueError("halt needs who and why (--reason)")
        if at.tzinfo is None:
            raise ValueError("at must be timezone-aware")
        info = HaltInfo(who=who, reason=reason, at=at)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{HALT_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"who": who, "reason": reason, "at": at.isoformat()}))
        os.replace(tmp, self.path)
        with journal.transaction() as tx:
            tx.record_control("halt", who, reason, at)
        return info

    def resume(self, journal: Journal, who: str, reason: str, at: dt.datetime) -> HaltInfo | None:
        """Lift the halt (journaled first); returns the halt that was lifted, or None when none was on."""
        was = self.current()
        with journal.transaction() as tx:
            tx.record_control("resume", who, reason, at, details={"lifted": was.describe() if was else None})
        self.path.unlink(missing_ok=True)
        return was
