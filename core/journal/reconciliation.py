"""Reconciliation: position breaks and the adjustments that settle them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from core.journal.base import JournalError, TxBase, _aware, _finite, _json  # noqa: F401


class ReconciliationTx(TxBase):
    """Writes and reads of `position_breaks` and `position_adjustments`."""

    def record_break(
        self,
        symbol: str,
        session: dt.date,
        broker_quantity: float,
        journal_quantity: float,
        detected_at: dt.datetime,
        *,
        run_id: str | None = None,
    ) -> bool:
        """Record a position break (broker and journal disagree on `symbol`'s shares), once per session. While
        any break of a symbol is unresolved, `open_breaks` names it and no new order for it may be sent."""
        return self._insert(
            "INSERT INTO position_breaks (symbol, detected_session, broker_quantity, journal_quantity,"
            " detected_at, run_id) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING 1",
            [symbol, session, _finite(broker_quantity, "broker_quantity"),
             _finite(journal_quantity, "journal_quantity"), _aware(detected_at, "detected_at"), run_id],
        )

    def open_breaks(self, symbol: str | None = None) -> list[dict[str, Any]]:
        """Unresolved position breaks (all, or of `symbol`), oldest first, as dicts of the table's columns."""
        sql = "SELECT * FROM position_breaks WHERE resolved_at IS NULL"
        params: list[Any] = []
        if symbol is not None:
            sql += " AND symbol = ?"
            params.append(symbol)
        cur = self.con.execute(sql + " ORDER BY detected_at", params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def resolve_breaks(self, symbol: str, who: str, note: str, at: dt.datetime, *,
                       adjustment: float | None = None, broker_quantity: float | None = None) -> int:
        """Mark every unresolved break of `symbol` settled (by `who`, how: `note`) and record the control
        action. With a non-zero `adjustment` (signed shares: the broker's quantity minus the journal's, at
        resolution), also record it in `position_adjustments`, so that the journal's quantity
        (`v_journal_positions`) agrees with the broker's from now on. Returns how many breaks were resolved
        (0: none was open, and nothing is recorded)."""
        rows = self.con.execute(
            "UPDATE position_breaks SET resolved_at = ?, resolved_by = ?, resolution = ?"
            " WHERE symbol = ? AND resolved_at IS NULL RETURNING 1",
            [_aware(at, "at"), who, note, symbol],
        ).fetchall()
        if rows:
            details: dict[str, Any] = {"breaks": len(rows)}
            if adjustment:
                self._insert(
                    "INSERT INTO position_adjustments (symbol, shares, adjusted_at, who, note, broker_quantity)"
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING 1",
                    [symbol, _finite(adjustment, "adjustment"), at, who, note,
                     _finite(broker_quantity, "broker_quantity")],
                )
                details.update(adjustment_shares=adjustment, broker_quantity=broker_quantity)
            self.record_control("resolve", who, note, at, symbol=symbol, details=details)
        return len(rows)
