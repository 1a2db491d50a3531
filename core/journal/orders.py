"""Orders, their status changes and executions (fills): writes and named reads."""

from __future__ import annotations

import datetime as dt
from typing import Any

from core.journal.base import JournalError, TxBase, _aware, _finite, _json  # noqa: F401
from core.journal.derived import refresh_symbol
from core.order_status import OrderStatus


class OrdersTx(TxBase):
    """Writes and reads of `orders`, `order_events`, `order_links`, `order_changes` and `executions`."""

    def record_order(
        self,
        order_ref: str,
        *,
        strategy: str,
        symbol: str,
        intent: str,
        action: str,
        quantity: float,
        order_type: str,
        session: dt.date,
        as_of: dt.datetime,
        limit_price: float | None = None,
        stop_price: float | None = None,
        perm_id: int | None = None,
        order_id: int | None = None,
        run_id: str | None = None,
        external: bool = False,
    ) -> bool:
        """Record an order by its `order_ref`. A second call with the same `order_ref` only fills in a
        `perm_id`/`order_id` that was unknown; it never changes what was recorded.

        Raises:
            ValueError: empty `order_ref`, an action other than BUY/SELL, a non-positive quantity.
        """
        if not order_ref:
            raise ValueError("order_ref must be a non-empty string")
        if action not in ("BUY", "SELL"):
            raise ValueError(f"action must be 'BUY' or 'SELL', got {action!r}")
        new = self._insert(
            "INSERT INTO orders (order_ref, perm_id, order_id, strategy, symbol, intent, action, quantity,"
            " order_type, limit_price, stop_price, session, as_of, run_id, external)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING RETURNING 1",
            [
                order_ref,
                perm_id,
                order_id,
                strategy,
                symbol,
                intent,
                action,
                _finite(quantity, "quantity", positive=True),
                order_type,
                _finite(limit_price, "limit_price", positive=True),
                _finite(stop_price, "stop_price", positive=True),
                session,
                _aware(as_of, "as_of"),
                run_id,
                external,
            ],
        )
        if new and self._one("SELECT 1 FROM executions WHERE order_ref = ? LIMIT 1", [order_ref]):
            refresh_symbol(self.con, symbol)  # fills recorded before their order now have its strategy
        return new or self.record_order_ids(order_ref, perm_id=perm_id, order_id=order_id)

    def record_order_ids(self, order_ref: str, *, perm_id: int | None, order_id: int | None) -> bool:
        """Fill in the broker's ids of a recorded order where they are still unknown; True when any was."""
        if perm_id is None and order_id is None:
            return False
        return self._insert(
            "UPDATE orders SET perm_id = coalesce(perm_id, ?), order_id = coalesce(order_id, ?),"
            " updated_at = current_timestamp"
            " WHERE order_ref = ? AND ((perm_id IS NULL AND ? IS NOT NULL) OR (order_id IS NULL AND ? IS NOT NULL))"
            " RETURNING 1",
            [perm_id, order_id, order_ref, perm_id, order_id],
        )

    def record_order_status(
        self,
        order_ref: str,
        status: str,
        event_time: dt.datetime,
        *,
        filled: float = 0.0,
        remaining: float | None = None,
        avg_fill_price: float | None = None,
        perm_id: int | None = None,
        message: str | None = None,
    ) -> bool:
        """Record one status change of an order (IB's orderStatus: Submitted, Filled, Cancelled, ...) and make
        it the order's latest status, unless the order already reached a terminal status
        (`OrderStatus.DONE`), which is never replaced by a stale earlier one.

        Raises:
            JournalError: no order with this `order_ref` is recorded.
        """
        if not self.con.execute("SELECT 1 FROM orders WHERE order_ref = ?", [order_ref]).fetchall():
            raise JournalError(f"order_ref {order_ref!r}: status {status!r} for an order the journal lacks")
        new = self._insert(
            "INSERT INTO order_events (order_ref, status, filled, remaining, avg_fill_price, perm_id, message,"
            " event_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING 1",
            [
                order_ref,
                status,
                _finite(filled, "filled"),
                _finite(remaining, "remaining"),
                _finite(avg_fill_price, "avg_fill_price"),
                perm_id,
                message,
                _aware(event_time, "event_time"),
            ],
        )
        if new:
            placeholders = ", ".join("?" for _ in OrderStatus.DONE)
            self.con.execute(
                f"UPDATE orders SET status = ?, perm_id = coalesce(perm_id, ?), updated_at = current_timestamp"
                f" WHERE order_ref = ? AND status NOT IN ({placeholders})",
                [status, perm_id, order_ref, *OrderStatus.DONE],
            )
        return new

    def record_order_link(self, order_ref: str, *, parent_ref: str, parent_order_id: int | None,
                          parent_perm_id: int | None, oca_group: str | None) -> bool:
        """Record that the order `order_ref` is a bracket child of `parent_ref` (its orderId and permId at the
        broker, IB's parentId), in `oca_group`. A second call only fills in ids that were unknown.

        Raises:
            JournalError: either order is not recorded.
        """
        for ref in (order_ref, parent_ref):
            if not self.con.execute("SELECT 1 FROM orders WHERE order_ref = ?", [ref]).fetchall():
                raise JournalError(f"order_ref {ref!r}: a bracket link for an order the journal lacks")
        return self._insert(
            "INSERT INTO order_links (order_ref, parent_ref, parent_order_id, parent_perm_id, oca_group)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (order_ref) DO UPDATE SET"
            " parent_order_id = coalesce(order_links.parent_order_id, excluded.parent_order_id),"
            " parent_perm_id = coalesce(order_links.parent_perm_id, excluded.parent_perm_id)"
            " WHERE order_links.parent_order_id IS NULL OR order_links.parent_perm_id IS NULL RETURNING 1",
            [order_ref, parent_ref, parent_order_id or None, parent_perm_id or None, oca_group or None])

    def record_order_change(self, order_ref: str, *, quantity_before: float, quantity_after: float,
                            event_time: dt.datetime, reason: str) -> bool:
        """Record that the working order `order_ref` was changed at the broker from `quantity_before` to
        `quantity_after` total shares at `event_time` (the broker's clock), and why. Idempotent.

        Raises:
            JournalError: the order is not recorded.
        """
        if not self.con.execute("SELECT 1 FROM orders WHERE order_ref = ?", [order_ref]).fetchall():
            raise JournalError(f"order_ref {order_ref!r}: a quantity change of an order the journal lacks")
        return self._insert(
            "INSERT INTO order_changes (order_ref, quantity_before, quantity_after, reason, event_time)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING 1",
            [order_ref, _finite(quantity_before, "quantity_before"), _finite(quantity_after, "quantity_after"),
             reason, _aware(event_time, "event_time")])

    def order_changes_of(self, order_ref: str) -> list[dict[str, Any]]:
        """The quantity changes recorded for `order_ref` (`order_changes` rows as dicts), oldest first."""
        return self._rows("SELECT * FROM order_changes WHERE order_ref = ? ORDER BY event_time, recorded_at",
                          [order_ref])

    def record_execution(
        self,
        exec_id: str,
        *,
        symbol: str,
        side: str,
        shares: float,
        price: float,
        exec_time: dt.datetime,
        order_ref: str | None = None,
        perm_id: int | None = None,
        order_id: int | None = None,
        strategy: str | None = None,
        commission: float | None = None,
        realized_pnl: float | None = None,
        account: str | None = None,
        external: bool = False,
    ) -> bool:
        """Record a fill by IB's `exec_id` (side 'BOT' or 'SLD', shares > 0, price USD a share). A repeat
        only fills in a commission or realized P&L that was unknown (IB sends the commission report after
        the execution); nothing recorded is replaced.

        Raises:
            ValueError: empty exec_id, unknown side, non-positive shares or price, naive exec_time.
        """
        if not exec_id:
            raise ValueError("exec_id must be a non-empty string")
        if side not in ("BOT", "SLD"):
            raise ValueError(f"side must be 'BOT' or 'SLD', got {side!r}")
        params = [
            exec_id,
            order_ref,
            perm_id,
            order_id,
            strategy,
            symbol,
            side,
            _finite(shares, "shares", positive=True),
            _finite(price, "price", positive=True),
            _finite(commission, "commission"),
            _finite(realized_pnl, "realized_pnl"),
            _aware(exec_time, "exec_time"),
            account,
            external,
        ]
        changed = self._insert(
            "INSERT INTO executions (exec_id, order_ref, perm_id, order_id, strategy, symbol, side, shares,"
            " price, commission, realized_pnl, exec_time, account, external)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING 1",
            params,
        ) or self._insert(
            "UPDATE executions SET commission = coalesce(commission, ?), realized_pnl = coalesce(realized_pnl, ?)"
            " WHERE exec_id = ? AND ((commission IS NULL AND ? IS NOT NULL)"
            "   OR (realized_pnl IS NULL AND ? IS NOT NULL)) RETURNING 1",
            [params[9], params[10], exec_id, params[9], params[10]],
        )
        if changed:
            refresh_symbol(self.con, symbol)
        return changed

    # ---- named reads ------------------------------------------------------------------------------------------

    def has_order(self, order_ref: str) -> bool:
        """Whether an order with this `order_ref` is recorded."""
        return self._one("SELECT 1 FROM orders WHERE order_ref = ?", [order_ref]) is not None

    def order(self, order_ref: str) -> dict[str, Any] | None:
        """The recorded order `order_ref` as a dict of the `orders` columns (status, quantity in shares, order_id,
        perm_id, strategy, symbol, intent, session, ...), or None when the journal has no such order."""
        rows = self._rows("SELECT * FROM orders WHERE order_ref = ?", [order_ref])
        return rows[0] if rows else None

    def order_of(self, *, strategy: str, intent: str, symbol: str, session: dt.date) -> tuple[str, float] | None:
        """(order_ref, quantity in shares) of the order of `strategy` with `intent` for `symbol` in `session` that
        did not end unfilled (`OrderStatus.ENDED_UNFILLED`: it is working, filled or not yet known), or None."""
        row = self._one(
            "SELECT order_ref, quantity FROM orders WHERE strategy = ? AND intent = ? AND symbol = ? AND session = ?"
            f" AND status NOT IN ({', '.join('?' for _ in OrderStatus.ENDED_UNFILLED)}) ORDER BY as_of DESC",
            [strategy, intent, symbol, session, *OrderStatus.ENDED_UNFILLED])
        return (row[0], float(row[1])) if row else None

    def unfinished_orders(self, strategy: str) -> list[tuple[str, float]]:
        """(order_ref, quantity in shares) of every order of `strategy` whose status is not final
        (`OrderStatus.DONE`), oldest first."""
        return [(r[0], float(r[1])) for r in self.con.execute(
            f"SELECT order_ref, quantity FROM orders WHERE strategy = ? AND status NOT IN "
            f"({', '.join('?' for _ in OrderStatus.DONE)}) ORDER BY as_of, order_ref",
            [strategy, *OrderStatus.DONE]).fetchall()]

    def fills_of(self, order_ref: str) -> list[tuple[float, float, float | None]]:
        """(shares, price USD a share, commission USD or None) of every execution of `order_ref`, oldest first."""
        return [(float(r[0]), float(r[1]), r[2]) for r in self.con.execute(
            "SELECT shares, price, commission FROM executions WHERE order_ref = ? ORDER BY exec_time, exec_id",
            [order_ref]).fetchall()]

    def known_exec_ids(self, exec_ids: list[str]) -> set[str]:
        """Those of `exec_ids` (IB execIds) the journal already holds."""
        if not exec_ids:
            return set()
        return {r[0] for r in self.con.execute(
            "SELECT exec_id FROM executions WHERE exec_id IN (SELECT unnest(?::VARCHAR[]))", [list(exec_ids)]
        ).fetchall()}

    def strategy_fills(self, strategy: str) -> list[tuple[str, float, float, float, dt.datetime]]:
        """(symbol, signed shares (+ bought, - sold), price USD, commission USD (0 when unknown), exec_time) of
        every execution of `strategy` (its own, or through its order), oldest first."""
        return [(r[0], float(r[1]), float(r[2]), float(r[3]), r[4]) for r in self.con.execute(
            "SELECT symbol, signed_shares, price, coalesce(commission, 0), exec_time FROM v_fills"
            " WHERE strategy_name = ? ORDER BY exec_time, exec_id", [strategy]).fetchall()]

    def strategy_fill_rows(self, strategy: str, symbol: str | None = None,
                       session: dt.date | None = None) -> list[dict[str, Any]]:
        """The executions of `strategy` (only `symbol`'s, only `session`'s (New York date) when given), in time
        order: symbol, signed shares (+ bought, - sold), price (USD a share), commission (USD, None until
        reported), session."""
        rows = self.con.execute(
            "SELECT symbol, signed_shares, price, commission, session FROM v_fills WHERE strategy_name = ?"
            " AND (CAST(? AS VARCHAR) IS NULL OR symbol = ?) AND (CAST(? AS DATE) IS NULL OR session = ?)"
            " ORDER BY exec_time, exec_id", [strategy, symbol, symbol, session, session]).fetchall()
        return [{"symbol": r[0], "shares": float(r[1]), "price": float(r[2]), "commission": r[3], "session": r[4]}
                for r in rows]

    def fills_before(self, end: dt.datetime) -> list[dict[str, Any]]:
        """Every execution before `end` (aware), oldest first, as dicts: strategy (the strategy's name, from the
        execution or its order), symbol, signed_shares, price (USD), commission (USD or None), exec_time,
        exec_id."""
        return self._rows(
            "SELECT strategy_name AS strategy, symbol, signed_shares, price, commission, exec_time, exec_id"
            " FROM v_fills WHERE exec_time < ? ORDER BY exec_time, exec_id", [_aware(end, "end")])
