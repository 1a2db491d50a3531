"""Operator controls: halt, resume, flatten, resolve, with who and why."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from core.journal.base import JournalError, TxBase, _aware, _finite, _json  # noqa: F401


class ControlsTx(TxBase):
    """Writes and reads of `controls`."""

    def record_control(
        self,
        action: str,
        who: str,
        reason: str,
        at: dt.datetime,
        *,
        symbol: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record an operator action ('halt', 'resume', 'flatten', 'resolve') with who did it and why.

        Raises:
            ValueError: an unknown action, or an empty `who` or `reason`.
        """
        if action not in ("halt", "resume", "flatten", "resolve"):
            raise ValueError(f"action must be halt, resume, flatten or resolve, got {action!r}")
        if not who or not reason:
            raise ValueError("an operator action needs who did it and why (who and reason must be non-empty)")
        return self._insert(
            "INSERT INTO controls (action_at, action, who, reason, symbol, details) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING RETURNING 1",
            [_aware(at, "at"), action, who, reason, symbol, _json(details)],
        )
