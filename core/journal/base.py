"""What every table family's writes and reads share: the error, value checks, and the transaction's base.

A family module (``orders``, ``decisions``, ``account``, ``models``, ``controls``, ``reconciliation``) defines a
mixin of `TxBase`; `core.journal.JournalTx` combines them. Every method runs its SQL on ``self.con``, the
transaction's connection (a DuckDB connection, or the journal server's remote one: the same ``execute(sql,
params)`` returning a cursor with ``fetchall``, ``fetchone`` and ``description``).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

from core.validation import require_finite, require_positive


class JournalError(RuntimeError):
    """The journal could not be written or read (lock not obtained in time, newer schema, bad record, the file
    held by another process, no journal yet)."""


def _aware(value: dt.datetime, name: str) -> dt.datetime:
    if not isinstance(value, dt.datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")
    return value


def _finite(value: float | None, name: str, positive: bool = False) -> float | None:
    """None stays None (unknown); anything else must be a finite number (and > 0 when `positive`)."""
    if value is None:
        return None
    return require_positive(name, value) if positive else require_finite(name, value)


def _json(value: Mapping[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value, default=str, sort_keys=True)


class TxBase:
    """The connection of one transaction and the two ways the families use it."""

    def __init__(self, con: Any):
        self.con = con

    def _insert(self, sql: str, params: Sequence[Any]) -> bool:
        """Run a write ending in ``RETURNING 1``; True when it changed a row."""
        return bool(self.con.execute(sql, list(params)).fetchall())

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows of a read as dicts of column name -> value."""
        cur = self.con.execute(sql, list(params))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def _one(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        """The first row of a read, or None."""
        rows = self.con.execute(sql, list(params)).fetchall()
        return tuple(rows[0]) if rows else None

    def fetch(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple]:
        """Read inside this transaction (it sees the live journal, including this transaction's own writes).
        For ad hoc reads and tests; flows and tasks use the families' named reads."""
        return self.con.execute(sql, list(params or [])).fetchall()
