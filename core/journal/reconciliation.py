"""Reconciliation: position breaks and the adjustments that settle them."""

from __future__ import annotations

import datetime as dt
from typing import Any

from core.journal.base import JournalError, TxBase, _aware, _finite, _json  # noqa: F401
from core.order_status import OrderStatus


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

    # ---- named reads ------------------------------------------------------------------------------------------

    def breaks_open_or_of(self, session: dt.date) -> list[dict[str, Any]]:
        """Position breaks still unresolved or detected in `session`, as dicts of the table's columns."""
        return self._rows("SELECT * FROM position_breaks WHERE resolved_at IS NULL OR detected_session = ?"
                          " ORDER BY detected_at", [session])

    def journal_quantities(self) -> dict[str, float]:
        """The journal's quantity (shares, signed) of every symbol it has executions or adjustments of
        (`v_journal_positions`), what reconciliation compares with the broker."""
        return {r[0]: float(r[1]) for r in self.con.execute(
            "SELECT symbol, quantity FROM v_journal_positions").fetchall()}

    def orders_to_reconcile(self, perm_ids: list[int], order_refs: list[str]) -> list[dict[str, Any]]:
        """Orders whose status is not final, or with one of `perm_ids` or `order_refs`, each with ``filled``
        (shares the journal's executions of it add up to)."""
        return self._rows(f"""
            SELECT o.order_ref, o.perm_id, o.order_id, o.strategy, o.symbol, o.action, o.quantity, o.status,
                   o.external, o.session, o.as_of, coalesce(sum(e.shares), 0) AS filled
            FROM orders o LEFT JOIN executions e ON e.order_ref = o.order_ref
            WHERE o.status NOT IN ({', '.join('?' for _ in OrderStatus.DONE)})
               OR o.perm_id IN (SELECT unnest(?::BIGINT[])) OR o.order_ref IN (SELECT unnest(?::VARCHAR[]))
            GROUP BY ALL""", [*OrderStatus.DONE, list(perm_ids), list(order_refs)])

    def executions_to_reconcile(self, exec_ids: list[str], since: dt.datetime) -> list[dict[str, Any]]:
        """Executions with one of `exec_ids`, or at or after `since`: exec_id, symbol, side, shares, exec_time,
        commission (USD or None), order_ref."""
        return self._rows("""
            SELECT exec_id, symbol, side, shares, exec_time, commission, order_ref FROM executions
            WHERE exec_id IN (SELECT unnest(?::VARCHAR[])) OR exec_time >= ?""",
                          [list(exec_ids), _aware(since, "since")])

    def day_trades(self, session: dt.date) -> list[dict[str, Any]]:
        """The executions of `session` (New York date), oldest first: exec_id, exec_time, symbol, side, shares,
        price, commission, realized_pnl, order_ref, perm_id, order_id, strategy, external, account."""
        return self._rows("""
            SELECT exec_id, exec_time, symbol, side, shares, price, commission, realized_pnl, order_ref, perm_id,
                   order_id, strategy_name AS strategy, external, account
            FROM v_fills WHERE session = ? ORDER BY exec_time, exec_id""", [session])

    def day_orders(self, session: dt.date) -> list[dict[str, Any]]:
        """The orders of `session`, any with a fill in it, and any not final, each with its fills' filled
        (shares), avg_fill_price (USD) and commission (USD), in the order they were decided."""
        return self._rows(f"""
            SELECT o.order_ref, o.perm_id, o.order_id, o.strategy, o.symbol, o.intent, o.action, o.quantity,
                   o.order_type, o.limit_price, o.stop_price, o.status, coalesce(sum(e.shares), 0) AS filled,
                   sum(e.shares * e.price) / nullif(sum(e.shares), 0) AS avg_fill_price,
                   coalesce(sum(e.commission), 0) AS commission, o.external, o.session, o.as_of
            FROM orders o LEFT JOIN executions e ON e.order_ref = o.order_ref
            WHERE o.session = ? OR o.status NOT IN ({', '.join('?' for _ in OrderStatus.DONE)})
               OR o.order_ref IN (SELECT order_ref FROM v_fills WHERE session = ?)
            GROUP BY ALL ORDER BY o.as_of, o.order_ref""", [session, *OrderStatus.DONE, session])
