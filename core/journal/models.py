"""The MTF model registry's records: the registry itself (versions with their files, champions) and the
versions' statuses and metrics.

The registry's tables (`models.registry` is their one user; its docstring says what they hold and why):
`model_versions` (one row a version), `model_files` (its files as BLOBs, with sha256), `model_champions` (one row
a symbol: the champion and its history) and `model_champion_changes` (every change of a champion). The older
`models`, `model_metrics` and `model_allowances` are the versions' statuses, metrics and the edge gate's
operator decisions, keyed by the journal id ``SYMBOL/version`` (`models.records`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from core.journal.base import JournalError, TxBase, _aware, _finite, _json  # noqa: F401


class ModelsTx(TxBase):
    """Writes and reads of the registry's tables (`model_versions`, `model_files`, `model_champions`,
    `model_champion_changes`) and of `models`, `model_metrics` and `model_allowances` (the edge gate's operator
    decisions). Symbols are stored upper case; callers pass them so."""

    # ---- the registry -------------------------------------------------------------------------------------------

    def model_symbols(self) -> list[str]:
        """Every symbol with at least one registered version, sorted."""
        return [r[0] for r in self.con.execute(
            "SELECT DISTINCT symbol FROM model_versions ORDER BY symbol").fetchall()]

    def model_versions_of(self, symbol: str | None = None) -> list[dict[str, Any]]:
        """The versions of `symbol` (every symbol when None), by symbol and number: dicts of symbol, version,
        number, metadata (the parsed metadata.json), created_at, source."""
        rows = self._rows(
            "SELECT symbol, version, number, metadata, created_at, source FROM model_versions"
            + (" WHERE symbol = ?" if symbol is not None else "") + " ORDER BY symbol, number",
            [symbol] if symbol is not None else [])
        for r in rows:
            r["metadata"] = json.loads(r["metadata"])
        return rows

    def model_version_of(self, symbol: str, version: str) -> dict[str, Any] | None:
        """One version as `model_versions_of` gives it, or None when it is not registered."""
        return next((r for r in self.model_versions_of(symbol) if r["version"] == version), None)

    def next_model_number(self, symbol: str) -> int:
        """The number the next version of `symbol` gets (1 when it has none)."""
        return int(self.con.execute("SELECT coalesce(max(number), 0) + 1 FROM model_versions WHERE symbol = ?",
                                    [symbol]).fetchone()[0])

    def record_model_version(self, symbol: str, version: str, number: int, metadata: str, created_at: dt.datetime,
                             source: str, files: Mapping[str, bytes]) -> bool:
        """Record a version with all its files (`metadata` is the text of its metadata.json, stored as the
        ``metadata.json`` file too). Returns False, changing nothing, when the version is already registered.

        Raises:
            ValueError: a naive `created_at`, an unknown `source`, or no files.
        """
        if source not in ("registered", "imported"):
            raise ValueError(f"source must be registered or imported, got {source!r}")
        if not files:
            raise ValueError(f"{symbol} {version}: a version needs its files")
        if not self._insert(
            "INSERT INTO model_versions (symbol, version, number, metadata, created_at, source)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING 1",
            [symbol, version, int(number), metadata, _aware(created_at, "created_at"), source],
        ):
            return False
        for name, content in sorted({**files, "metadata.json": metadata.encode()}.items()):
            self.put_model_file(symbol, version, name, content)
        return True

    def put_model_file(self, symbol: str, version: str, name: str, content: bytes) -> None:
        """Store one file of a version (replacing a file of that name: walkforward.json after a new walk-forward
        run), with its size and sha256."""
        content = bytes(content)
        self.con.execute(
            "INSERT INTO model_files (symbol, version, name, content, bytes, sha256) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (symbol, version, name) DO UPDATE SET content = excluded.content, bytes = excluded.bytes,"
            " sha256 = excluded.sha256, recorded_at = get_current_timestamp()",
            [symbol, version, name, content, len(content), hashlib.sha256(content).hexdigest()])

    def model_file_digests(self, symbol: str, version: str) -> dict[str, str]:
        """The files of a version: name -> sha256 (hex); empty when the version is not registered."""
        return dict(self.con.execute("SELECT name, sha256 FROM model_files WHERE symbol = ? AND version = ?",
                                     [symbol, version]).fetchall())

    def model_file_contents(self, symbol: str, version: str, names: Sequence[str]) -> dict[str, tuple[bytes, str]]:
        """The named files of a version: name -> (content, sha256 as stored); a name it lacks is left out."""
        if not names:
            return {}
        rows = self.con.execute(
            "SELECT name, content, sha256 FROM model_files WHERE symbol = ? AND version = ? AND list_contains(?, name)",
            [symbol, version, list(names)]).fetchall()
        return {n: (bytes(c), h) for n, c, h in rows}

    def model_champion_of(self, symbol: str) -> dict[str, Any] | None:
        """The champion pointer of `symbol`: {"version", "history" (oldest first), "changes"}, or None when it
        never had a champion."""
        row = self._one("SELECT version, history, changes FROM model_champions WHERE symbol = ?", [symbol])
        if row is None:
            return None
        return {"version": row[0], "history": list(json.loads(row[1])), "changes": int(row[2])}

    def record_champion(self, symbol: str, version: str, history: Sequence[str], action: str,
                        previous: str | None) -> int:
        """Set the champion of `symbol` to `version` with `history` and log the change (`action` 'promote',
        'rollback' or 'import'; `previous` the champion before it). The caller read the pointer in this same
        transaction. Returns the change's number.

        Raises:
            ValueError: an unknown action, or `version` is not a registered version of `symbol`.
        """
        if action not in ("promote", "rollback", "import"):
            raise ValueError(f"action must be promote, rollback or import, got {action!r}")
        if self.model_version_of(symbol, version) is None:
            raise ValueError(f"{symbol} has no registered version {version!r}")
        change = int(self.con.execute("SELECT coalesce(max(change), 0) + 1 FROM model_champion_changes"
                                      " WHERE symbol = ?", [symbol]).fetchone()[0])
        self.con.execute(
            "INSERT INTO model_champions (symbol, version, history, changes) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (symbol) DO UPDATE SET version = excluded.version, history = excluded.history,"
            " changes = excluded.changes, changed_at = get_current_timestamp()",
            [symbol, version, json.dumps(list(history)), change])
        self.con.execute("INSERT INTO model_champion_changes (symbol, change, action, version, previous)"
                         " VALUES (?, ?, ?, ?, ?)", [symbol, change, action, version, previous])
        return change

    # ---- statuses, metrics, allowances -----------------------------------------------------------------------

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
