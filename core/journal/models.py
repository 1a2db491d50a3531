"""The MTF model registry's records: model versions and their metrics."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from core.journal.base import JournalError, TxBase, _aware, _finite, _json  # noqa: F401


class ModelsTx(TxBase):
    """Writes and reads of `models` and `model_metrics`."""

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
