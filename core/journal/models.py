"""The MTF model registry's records: model versions and their metrics."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from core.journal.base import JournalError, TxBase, _aware, _finite, _json  # noqa: F401


class ModelsTx(TxBase):
    """Writes and reads of `models`, `model_metrics` and `model_allowances` (the edge gate's operator decisions)."""

    def record_model(
        self,
        version: str,
        symbol: str,
        status: str,
        *,
        path: str | None = None,
        lookback: int | None = None,
        horizon: int | None = None,
        data_start: dt.datetime | None = None,
        data_end: dt.datetime | None = None,
        data_fingerprint: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record a model version; a repeat only moves its `status` (challenger, champion, retired)."""
        if status not in ("challenger", "champion", "retired"):
            raise ValueError(f"status must be challenger, champion or retired, got {status!r}")
        if self._insert(
            "INSERT INTO models (version, symbol, status, path, lookback, horizon, data_start, data_end,"
            " data_fingerprint, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING RETURNING 1",
            [version, symbol, status, path, lookback, horizon, data_start, data_end, data_fingerprint,
             _json(metadata)],
        ):
            return True
        return self._insert(
            "UPDATE models SET status = ?, updated_at = current_timestamp WHERE version = ? AND status <> ?"
            " RETURNING 1",
            [status, version, status],
        )

    def record_model_metrics(
        self,
        version: str,
        eval_window: str,
        metrics: Mapping[str, float],
        evaluated_at: dt.datetime,
        baselines: Mapping[str, float] | None = None,
    ) -> int:
        """Record metrics of `version` on `eval_window` (metric name -> value; `baselines` gives the same
        metric for the baseline where one applies). Returns the number of metrics recorded new."""
        baselines = baselines or {}
        count = 0
        for name, value in sorted(metrics.items()):
            count += self._insert(
                "INSERT INTO model_metrics (version, eval_window, metric, value, baseline, evaluated_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING 1",
                [version, eval_window, name, _finite(value, name), _finite(baselines.get(name), name),
                 _aware(evaluated_at, "evaluated_at")],
            )
        return count

    def model_metrics_of(self, version: str, eval_window: str) -> dict[str, tuple[float | None, float | None]]:
        """The metrics of `version` on `eval_window`: metric name -> (value, baseline); empty when none."""
        rows = self.con.execute(
            "SELECT metric, value, baseline FROM model_metrics WHERE version = ? AND eval_window = ?",
            [version, eval_window],
        ).fetchall()
        return {m: (v, b) for m, v, b in rows}

    def clear_model_metrics(self, version: str, eval_window: str) -> int:
        """Delete the metrics of `version` on `eval_window` before a new evaluation of the same window replaces
        them (a walk-forward run again); returns the rows deleted."""
        n = self.con.execute(
            "SELECT count(*) FROM model_metrics WHERE version = ? AND eval_window = ?", [version, eval_window]
        ).fetchone()[0]
        self.con.execute("DELETE FROM model_metrics WHERE version = ? AND eval_window = ?", [version, eval_window])
        return int(n)

    def record_model_allowance(
        self, symbol: str, allowed: bool, who: str, reason: str, at: dt.datetime, *, version: str | None = None
    ) -> bool:
        """Record an operator's decision to let `symbol`'s MTF champion trade past the edge gate (`allowed`
        True) or to withdraw that (False); the latest decision counts (:meth:`model_allowance`).

        Raises:
            ValueError: an empty `symbol`, `who` or `reason`, or a naive `at`.
        """
        if not symbol or not who or not reason:
            raise ValueError("an allowance needs the symbol, who decided and why (non-empty)")
        return self._insert(
            "INSERT INTO model_allowances (symbol, decided_at, allowed, who, reason, version)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING 1",
            [symbol.upper(), _aware(at, "at"), bool(allowed), who, reason, version],
        )

    def model_allowance(self, symbol: str) -> dict[str, Any] | None:
        """The latest allowance decision for `symbol` (dict of the table's columns), or None when none."""
        rows = self._rows("SELECT * FROM model_allowances WHERE symbol = ? ORDER BY decided_at DESC LIMIT 1",
                          [symbol.upper()])
        return rows[0] if rows else None
