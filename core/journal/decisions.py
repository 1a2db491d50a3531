"""Decisions: signals (every decision with its inputs), EMA state, and flow runs' events."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from core.journal.base import JournalError, TxBase, _aware, _finite, _json  # noqa: F401


class DecisionsTx(TxBase):
    """Writes and reads of `signals`, `ema_state` and `flow_events`."""

    def record_signal(
        self,
        strategy: str,
        symbol: str,
        as_of: dt.datetime,
        session: dt.date,
        decision: str,
        reason: str,
        *,
        signal: str | None = None,
        probability: float | None = None,
        price: float | None = None,
        quantity: float | None = None,
        order_ref: str | None = None,
        inputs: Mapping[str, Any] | None = None,
        run_id: str | None = None,
    ) -> bool:
        """Record one decision (including 'NO_TRADE') with its inputs, once per (strategy, symbol, as_of)."""
        if decision not in ("BUY", "SELL", "HOLD", "NO_TRADE"):
            raise ValueError(f"decision must be BUY, SELL, HOLD or NO_TRADE, got {decision!r}")
        if not reason:
            raise ValueError("reason must say why")
        return self._insert(
            "INSERT INTO signals (strategy, symbol, as_of, session, decision, signal, probability, price,"
            " quantity, order_ref, reason, inputs, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING RETURNING 1",
            [strategy, symbol, _aware(as_of, "as_of"), session, decision, signal,
             _finite(probability, "probability"), _finite(price, "price"), _finite(quantity, "quantity"),
             order_ref, reason, _json(inputs), run_id],
        )

    def record_ema_state(
        self,
        symbol: str,
        session: dt.date,
        close: float,
        ema_fast: float,
        ema_slow: float,
        *,
        fast_span: int,
        slow_span: int,
        signal: str,
        closes_seen: int,
        as_of: dt.datetime,
        run_id: str | None = None,
    ) -> bool:
        """Record the final EMAs of `session` after its official close was folded in, once per session."""
        return self._insert(
            "INSERT INTO ema_state (symbol, session, close, ema_fast, ema_slow, fast_span, slow_span, signal,"
            " closes_seen, as_of, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING RETURNING 1",
            [symbol, session, _finite(close, "close", positive=True), _finite(ema_fast, "ema_fast", True),
             _finite(ema_slow, "ema_slow", True), fast_span, slow_span, signal, closes_seen,
             _aware(as_of, "as_of"), run_id],
        )

    def record_flow_event(
        self,
        run_id: str,
        event: str,
        deployment: str,
        as_of: dt.datetime,
        *,
        outcome: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record a flow run's event ('started', 'completed', 'failed', 'skipped'), once per (run_id, event)."""
        return self._insert(
            "INSERT INTO flow_events (run_id, event, deployment, as_of, outcome, details)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING 1",
            [run_id, event, deployment, _aware(as_of, "as_of"), outcome, _json(details)],
        )

    # ---- named reads ------------------------------------------------------------------------------------------

    def signal(self, strategy: str, symbol: str, as_of: dt.datetime) -> dict[str, Any] | None:
        """The decision of `strategy` on `symbol` at `as_of` as a dict of the `signals` columns (``inputs``
        parsed from JSON into a dict, {} when none), or None when none is recorded."""
        rows = self.signals_at(strategy, as_of, symbol=symbol)
        return rows[0] if rows else None

    def signals_at(self, strategy: str, as_of: dt.datetime, *, symbol: str | None = None) -> list[dict[str, Any]]:
        """Every decision of `strategy` (of `symbol`, when given) at `as_of`, by symbol, as in `signal`."""
        sql, params = "SELECT * FROM signals WHERE strategy = ? AND as_of = ?", [strategy, _aware(as_of, "as_of")]
        if symbol is not None:
            sql, params = sql + " AND symbol = ?", [*params, symbol]
        rows = self._rows(sql + " ORDER BY symbol", params)
        for r in rows:
            r["inputs"] = json.loads(r["inputs"]) if isinstance(r["inputs"], str) else (r["inputs"] or {})
        return rows

    def loss_limit_reached_before(self, strategy: str, session: dt.date, before: dt.datetime) -> bool:
        """Whether a decision of `strategy` in `session` before `before` recorded that the session's loss limit
        was reached (``inputs.loss_limit_reached``)."""
        row = self._one("SELECT count(*) FROM signals WHERE strategy = ? AND session = ? AND as_of < ?"
                        " AND json_extract(inputs, '$.loss_limit_reached')::BOOLEAN",
                        [strategy, session, _aware(before, "before")])
        return bool(row and row[0])

    def ema_state(self, symbol: str, *, on: dt.date | None = None, before: dt.date | None = None
                  ) -> dict[str, Any] | None:
        """The EMA state of `symbol` recorded for session `on`, or else the latest one before session `before`
        (exactly one of them), as a dict of the `ema_state` columns, or None when there is none."""
        if (on is None) == (before is None):
            raise ValueError("ema_state needs exactly one of on= and before=")
        where, day = ("session = ?", on) if on is not None else ("session < ?", before)
        rows = self._rows(f"SELECT * FROM ema_state WHERE symbol = ? AND {where} ORDER BY session DESC LIMIT 1",
                          [symbol, day])
        return rows[0] if rows else None

    def decision(self, strategy: str, symbol: str, as_of: dt.datetime) -> dict[str, Any] | None:
        """The decision journaled for (strategy, symbol, as_of), as a dict of the `signals` row with `inputs`
        parsed, or None: what a rerun follows instead of deciding again."""
        rows = self.con.execute(
            "SELECT decision, signal, probability, price, quantity, order_ref, reason, inputs FROM signals"
            " WHERE strategy = ? AND symbol = ? AND as_of = ?", [strategy, symbol, _aware(as_of, "as_of")]).fetchall()
        if not rows:
            return None
        keys = ("decision", "signal", "probability", "price", "quantity", "order_ref", "reason", "inputs")
        row = dict(zip(keys, rows[0], strict=True))
        row["inputs"] = json.loads(row["inputs"]) if isinstance(row["inputs"], str) else row["inputs"]
        return row

    def session_decisions(self, strategy: str, session: dt.date) -> list[dict[str, Any]]:
        """The decisions of `strategy` on `session`, in time order: symbol, as_of, decision, reason, inputs
        (parsed)."""
        rows = self.con.execute(
            "SELECT symbol, as_of, decision, reason, inputs FROM signals WHERE strategy = ? AND session = ?"
            " ORDER BY as_of, symbol", [strategy, session]).fetchall()
        return [{"symbol": r[0], "as_of": r[1], "decision": r[2], "reason": r[3],
                 "inputs": json.loads(r[4]) if isinstance(r[4], str) else r[4]} for r in rows]

    def flow_event_details(self, deployment: str) -> list[dict[str, Any]]:
        """The ``details`` (parsed JSON) of every event of `deployment` that has any, in the order recorded."""
        return [json.loads(r[0]) if isinstance(r[0], str) else r[0] for r in self.con.execute(
            "SELECT details FROM flow_events WHERE deployment = ? AND details IS NOT NULL ORDER BY recorded_at",
            [deployment]).fetchall()]
