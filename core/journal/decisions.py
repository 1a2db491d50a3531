"""Decisions: signals (every decision with its inputs), EMA state, and flow runs' events."""

from __future__ import annotations

import datetime as dt
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
