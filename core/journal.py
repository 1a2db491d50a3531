"""The journal: a DuckDB file holding every decision, order, fill, equity snapshot and model metric.

Concurrency (DESIGN.md: a DuckDB file is open by one process at a time while anything writes; flows are
separate processes that overlap at 15:55-16:00; people query while flows run):

* **Writers** serialise on a lock file beside the journal (`journal.duckdb.lock`, `filelock`), so concurrent
  flows queue for a few milliseconds instead of failing. Each write is one short-lived connection and one
  transaction: connect (retrying while any other process holds DuckDB's own file lock), migrate if needed,
  write, commit, checkpoint, close.
* **Readers** never open the live file. Before a writer releases the lock it copies the checkpointed file to
  a read snapshot (`journal.read.duckdb`, replaced atomically with `os.replace`). `tradeflow sql` and the
  DuckDB CLI open the snapshot read-only: a person holding a session for hours never blocks or breaks a flow,
  and a new query sees every write completed before it started (the snapshot is refreshed inside each write).

The schema is defined once, here (`MIGRATIONS`), carries a version in `schema_version`, and migrates forward
when a writer opens the file. Writes are idempotent on natural keys: executions by `exec_id`, orders by
`order_ref`, equity snapshots by (session, kind), signals by (strategy, symbol, as_of), EMA state by
(symbol, session), flow events by (run_id, event). A repeated write changes nothing already recorded.

Times are stored as TIMESTAMPTZ; session dates are New York dates. Money is USD; quantities are shares.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
from filelock import FileLock, Timeout

from core.validation import require_finite, require_positive

TERMINAL_ORDER_STATUSES = ("Filled", "Cancelled", "ApiCancelled", "Inactive")
"""IB order statuses after which an order never changes again."""

_SCHEMA_V1 = """
CREATE TABLE equity_snapshots (
    session          DATE        NOT NULL,
    kind             VARCHAR     NOT NULL CHECK (kind IN ('day_start', 'end_of_day')),
    account          VARCHAR,
    net_liquidation  DOUBLE      NOT NULL,   -- USD
    available_funds  DOUBLE,                 -- USD
    buying_power     DOUBLE,                 -- USD
    cash             DOUBLE,                 -- USD
    as_of            TIMESTAMPTZ NOT NULL,
    run_id           VARCHAR,
    recorded_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (session, kind)
);
CREATE TABLE orders (
    order_ref    VARCHAR     PRIMARY KEY,      -- our idempotency key, sent to IB as orderRef
    perm_id      BIGINT,                       -- IB's permanent id, once known
    order_id     BIGINT,                       -- the client's order id
    strategy     VARCHAR     NOT NULL,         -- 'ema', 'mtf', 'manual', 'external'
    symbol       VARCHAR     NOT NULL,
    intent       VARCHAR     NOT NULL,         -- 'entry', 'exit', 'stop', 'flatten', ...
    action       VARCHAR     NOT NULL CHECK (action IN ('BUY', 'SELL')),
    quantity     DOUBLE      NOT NULL CHECK (quantity > 0),   -- shares
    order_type   VARCHAR     NOT NULL,         -- 'MKT', 'LMT', 'STP'
    limit_price  DOUBLE,
    stop_price   DOUBLE,
    session      DATE        NOT NULL,
    as_of        TIMESTAMPTZ NOT NULL,
    run_id       VARCHAR,
    external     BOOLEAN     NOT NULL DEFAULT false,
    status       VARCHAR     NOT NULL DEFAULT 'Created',       -- latest IB status
    created_at   TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);
CREATE TABLE order_events (
    order_ref       VARCHAR     NOT NULL,
    status          VARCHAR     NOT NULL,
    filled          DOUBLE      NOT NULL DEFAULT 0,   -- shares filled so far
    remaining       DOUBLE,
    avg_fill_price  DOUBLE,
    perm_id         BIGINT,
    message         VARCHAR,
    event_time      TIMESTAMPTZ NOT NULL,
    recorded_at     TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (order_ref, status, filled)
);
CREATE TABLE executions (
    exec_id       VARCHAR     PRIMARY KEY,   -- IB execId
    order_ref     VARCHAR,
    perm_id       BIGINT,
    order_id      BIGINT,
    strategy      VARCHAR,
    symbol        VARCHAR     NOT NULL,
    side          VARCHAR     NOT NULL CHECK (side IN ('BOT', 'SLD')),
    shares        DOUBLE      NOT NULL CHECK (shares > 0),
    price         DOUBLE      NOT NULL CHECK (price > 0),   -- USD a share
    commission    DOUBLE,                                   -- USD, from IB's commission report
    realized_pnl  DOUBLE,                                   -- USD, IB's figure when given
    exec_time     TIMESTAMPTZ NOT NULL,
    account       VARCHAR,
    external      BOOLEAN     NOT NULL DEFAULT false,
    recorded_at   TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);
CREATE TABLE position_snapshots (
    as_of        TIMESTAMPTZ NOT NULL,
    source       VARCHAR     NOT NULL,   -- 'broker' or 'journal'
    symbol       VARCHAR     NOT NULL,
    quantity     DOUBLE      NOT NULL,   -- shares, negative when short
    avg_cost     DOUBLE,                 -- USD a share
    account      VARCHAR,
    run_id       VARCHAR,
    recorded_at  TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (as_of, source, symbol)
);
CREATE TABLE signals (
    strategy     VARCHAR     NOT NULL,
    symbol       VARCHAR     NOT NULL,
    as_of        TIMESTAMPTZ NOT NULL,
    session      DATE        NOT NULL,
    decision     VARCHAR     NOT NULL,   -- 'BUY', 'SELL', 'HOLD', 'NO_TRADE'
    signal       VARCHAR,                -- 'BULL'/'BEAR' (EMA), 'UP'/'DOWN' (MTF)
    probability  DOUBLE,                 -- P(up), MTF
    price        DOUBLE,                 -- USD, the price the decision used
    quantity     DOUBLE,                 -- shares ordered, when any
    order_ref    VARCHAR,
    reason       VARCHAR     NOT NULL,
    inputs       JSON,                   -- every input of the decision
    run_id       VARCHAR,
    recorded_at  TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (strategy, symbol, as_of)
);
CREATE TABLE ema_state (
    symbol       VARCHAR     NOT NULL,
    session      DATE        NOT NULL,
    close        DOUBLE      NOT NULL,   -- the official daily close folded in, USD
    ema_fast     DOUBLE      NOT NULL,
    ema_slow     DOUBLE      NOT NULL,
    fast_span    INTEGER     NOT NULL,
    slow_span    INTEGER     NOT NULL,
    signal       VARCHAR     NOT NULL,   -- 'BULL' or 'BEAR'
    closes_seen  INTEGER     NOT NULL,   -- closes folded in since the seed
    as_of        TIMESTAMPTZ NOT NULL,
    run_id       VARCHAR,
    recorded_at  TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (symbol, session)
);
CREATE TABLE models (
    version           VARCHAR     PRIMARY KEY,
    symbol            VARCHAR     NOT NULL,
    status            VARCHAR     NOT NULL,   -- 'challenger', 'champion', 'retired'
    path              VARCHAR,
    lookback          INTEGER,
    horizon           INTEGER,
    data_start        TIMESTAMPTZ,
    data_end          TIMESTAMPTZ,
    data_fingerprint  VARCHAR,
    metadata          JSON,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);
CREATE TABLE model_metrics (
    version       VARCHAR     NOT NULL,
    eval_window   VARCHAR     NOT NULL,   -- e.g. 'test', 'validation', 'oos:2026-02'
    metric        VARCHAR     NOT NULL,   -- e.g. 'accuracy', 'roc_auc', 'sim_return'
    value         DOUBLE,
    baseline      DOUBLE,                 -- the same metric for the baseline, when one applies
    evaluated_at  TIMESTAMPTZ NOT NULL,
    recorded_at   TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (version, eval_window, metric)
);
CREATE TABLE flow_events (
    run_id       VARCHAR     NOT NULL,   -- Prefect flow run id
    event        VARCHAR     NOT NULL,   -- 'started', 'completed', 'failed', 'skipped'
    deployment   VARCHAR     NOT NULL,
    as_of        TIMESTAMPTZ NOT NULL,
    outcome      VARCHAR,                -- a short human-readable summary or error
    details      JSON,
    recorded_at  TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (run_id, event)
);

CREATE VIEW v_equity_curve AS
WITH per_session AS (
    SELECT session,
           max(net_liquidation) FILTER (WHERE kind = 'day_start')  AS day_start_equity,
           max(net_liquidation) FILTER (WHERE kind = 'end_of_day') AS end_of_day_equity
    FROM equity_snapshots GROUP BY session
), curve AS (
    SELECT *, coalesce(end_of_day_equity, day_start_equity) AS equity FROM per_session
)
SELECT session, day_start_equity, end_of_day_equity, equity,
       max(equity) OVER (ORDER BY session ROWS UNBOUNDED PRECEDING) AS peak_equity,
       equity / max(equity) OVER (ORDER BY session ROWS UNBOUNDED PRECEDING) - 1 AS drawdown  -- fraction, <= 0
FROM curve ORDER BY session;

CREATE VIEW v_fills AS
SELECT e.*,
       coalesce(e.strategy, o.strategy, CASE WHEN e.external THEN 'external' END, 'unknown') AS strategy_name,
       CAST(timezone('America/New_York', e.exec_time) AS DATE) AS session,
       CASE e.side WHEN 'BOT' THEN e.shares ELSE -e.shares END AS signed_shares
FROM executions e LEFT JOIN orders o USING (order_ref);

CREATE VIEW v_round_trips AS
WITH walk AS (
    SELECT *,
           sum(signed_shares) OVER w AS position_after
    FROM v_fills
    WINDOW w AS (PARTITION BY strategy_name, symbol ORDER BY exec_time, exec_id ROWS UNBOUNDED PRECEDING)
), numbered AS (
    SELECT *,
           sum(CASE WHEN position_after - signed_shares = 0 THEN 1 ELSE 0 END) OVER (
               PARTITION BY strategy_name, symbol ORDER BY exec_time, exec_id ROWS UNBOUNDED PRECEDING
           )::BIGINT AS trip_no
    FROM walk
)
SELECT strategy_name AS strategy, symbol, trip_no,
       CASE WHEN first(signed_shares ORDER BY exec_time, exec_id) > 0 THEN 'long' ELSE 'short' END AS direction,
       min(exec_time) AS entry_time,
       CASE WHEN last(position_after ORDER BY exec_time, exec_id) = 0 THEN max(exec_time) END AS exit_time,
       last(position_after ORDER BY exec_time, exec_id) = 0 AS closed,
       sum(shares) FILTER (WHERE side = 'BOT') AS shares_bought,
       sum(shares * price) FILTER (WHERE side = 'BOT') / sum(shares) FILTER (WHERE side = 'BOT') AS avg_buy_price,
       sum(shares) FILTER (WHERE side = 'SLD') AS shares_sold,
       sum(shares * price) FILTER (WHERE side = 'SLD') / sum(shares) FILTER (WHERE side = 'SLD') AS avg_sell_price,
       coalesce(sum(commission), 0) AS commissions,
       CASE WHEN last(position_after ORDER BY exec_time, exec_id) = 0
            THEN sum(-signed_shares * price) END AS gross_pnl,
       CASE WHEN last(position_after ORDER BY exec_time, exec_id) = 0
            THEN sum(-signed_shares * price) - coalesce(sum(commission), 0) END AS net_pnl,
       count(*) AS fills
FROM numbered
GROUP BY strategy_name, symbol, trip_no
ORDER BY entry_time;

CREATE VIEW v_daily_pnl AS
WITH realized AS (
    SELECT strategy, CAST(timezone('America/New_York', exit_time) AS DATE) AS session,
           sum(gross_pnl) AS realized_gross_pnl, count(*) AS round_trips_closed
    FROM v_round_trips WHERE closed GROUP BY ALL
), costs AS (
    SELECT strategy_name AS strategy, session, sum(coalesce(commission, 0)) AS commissions, count(*) AS fills
    FROM v_fills GROUP BY ALL
)
SELECT coalesce(r.session, c.session) AS session, coalesce(r.strategy, c.strategy) AS strategy,
       coalesce(r.realized_gross_pnl, 0) AS realized_gross_pnl,
       coalesce(c.commissions, 0) AS commissions,
       coalesce(r.realized_gross_pnl, 0) - coalesce(c.commissions, 0) AS realized_net_pnl,
       coalesce(r.round_trips_closed, 0) AS round_trips_closed,
       coalesce(c.fills, 0) AS fills
FROM realized r FULL OUTER JOIN costs c ON r.strategy = c.strategy AND r.session = c.session
ORDER BY session, strategy;

CREATE VIEW v_open_positions AS
SELECT strategy, symbol,
       shares_bought - coalesce(shares_sold, 0) AS quantity,
       avg_buy_price AS avg_cost, entry_time
FROM v_round_trips WHERE NOT closed AND direction = 'long'
UNION ALL
SELECT strategy, symbol, coalesce(shares_bought, 0) - shares_sold, avg_sell_price, entry_time
FROM v_round_trips WHERE NOT closed AND direction = 'short';

CREATE VIEW v_latest_signals AS
SELECT * EXCLUDE (rn) FROM (
    SELECT *, row_number() OVER (PARTITION BY strategy, symbol ORDER BY as_of DESC) AS rn FROM signals
) WHERE rn = 1
ORDER BY strategy, symbol;
"""

_SCHEMA_V2 = """
CREATE TABLE controls (
    action_at    TIMESTAMPTZ NOT NULL,
    action       VARCHAR     NOT NULL CHECK (action IN ('halt', 'resume', 'flatten', 'resolve')),
    who          VARCHAR     NOT NULL,   -- the operator (login name, or as given)
    reason       VARCHAR     NOT NULL,
    symbol       VARCHAR,                -- 'resolve': the symbol whose break was settled
    details      JSON,                   -- e.g. what a flatten cancelled and sold
    recorded_at  TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (action_at, action)
);
CREATE TABLE position_breaks (
    symbol            VARCHAR     NOT NULL,
    detected_session  DATE        NOT NULL,
    broker_quantity   DOUBLE      NOT NULL,   -- shares the broker holds
    journal_quantity  DOUBLE      NOT NULL,   -- shares the journal's executions add up to
    detected_at       TIMESTAMPTZ NOT NULL,
    run_id            VARCHAR,
    resolved_at       TIMESTAMPTZ,            -- NULL while the break blocks orders for the symbol
    resolved_by       VARCHAR,
    resolution        VARCHAR,
    recorded_at       TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (symbol, detected_session)
);
CREATE TABLE daily_pnl (
    session         DATE        NOT NULL,
    strategy        VARCHAR     NOT NULL,   -- 'ema', 'mtf', 'external', or 'account' for the whole account
    realized_pnl    DOUBLE      NOT NULL,   -- USD, before commissions
    unrealized_pnl  DOUBLE      NOT NULL,   -- USD, open positions marked at the session's close
    commissions     DOUBLE      NOT NULL,   -- USD, >= 0
    net_pnl         DOUBLE      NOT NULL,   -- realized + unrealized change - commissions, USD
    end_equity      DOUBLE,                 -- NetLiquidation at the end of the session ('account' row), USD
    as_of           TIMESTAMPTZ NOT NULL,
    run_id          VARCHAR,
    recorded_at     TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (session, strategy)
);
"""

_SCHEMA_V3 = """
CREATE TABLE position_adjustments (
    symbol          VARCHAR     NOT NULL,
    shares          DOUBLE      NOT NULL,   -- signed shares added to the journal's quantity of the symbol
    adjusted_at     TIMESTAMPTZ NOT NULL,
    who             VARCHAR     NOT NULL,   -- the operator who resolved the break
    note            VARCHAR     NOT NULL,   -- how the break was settled
    broker_quantity DOUBLE,                 -- shares the broker held when the break was resolved
    recorded_at     TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (symbol, adjusted_at)
);

CREATE VIEW v_journal_positions AS
WITH executed AS (
    SELECT symbol, sum(signed_shares) AS shares FROM v_fills GROUP BY symbol
), adjusted AS (
    SELECT symbol, sum(shares) AS shares FROM position_adjustments GROUP BY symbol
)
SELECT coalesce(e.symbol, a.symbol) AS symbol,
       coalesce(e.shares, 0) AS executed_shares,
       coalesce(a.shares, 0) AS adjusted_shares,
       coalesce(e.shares, 0) + coalesce(a.shares, 0) AS quantity   -- what reconciliation compares with the broker
FROM executed e FULL OUTER JOIN adjusted a ON e.symbol = a.symbol
ORDER BY symbol;
"""

_SCHEMA_V4 = """
CREATE TABLE model_allowances (
    symbol       VARCHAR     NOT NULL,
    decided_at   TIMESTAMPTZ NOT NULL,
    allowed      BOOLEAN     NOT NULL,   -- TRUE: the symbol's champion may trade without walk-forward evidence
    who          VARCHAR     NOT NULL,   -- the operator
    reason       VARCHAR     NOT NULL,
    version      VARCHAR,                -- the champion when it was decided (information; the symbol is allowed)
    recorded_at  TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (symbol, decided_at)
);
"""

MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (1, "tables and views of the first journal", _SCHEMA_V1),
    (2, "operator controls (halt, resume, flatten, resolve), position breaks, daily P&L", _SCHEMA_V2),
    (3, "position adjustments recorded when a break is resolved; the journal's position per symbol", _SCHEMA_V3),
    (4, "operator allowances of MTF symbols past the edge gate", _SCHEMA_V4),
)
"""(version, description, SQL) in order; a new schema change appends one entry and never edits old ones."""

SCHEMA_VERSION = MIGRATIONS[-1][0]

_STORAGE = {"storage_compatibility_version": "v1.5.0"}
"""Files are written in the v1.5 storage format so that the DuckDB CLI (duckdb-cli 1.5 is the newest on the
package index, and it cannot read DuckDB 2.0's default format) opens the read snapshot."""


class JournalError(RuntimeError):
    """The journal could not be written or read (lock not obtained in time, newer schema, bad record)."""


UNAVAILABLE = (JournalError, OSError, duckdb.Error)
"""What a journal transaction raises when the journal cannot be written now: another process holds the file (the
DuckDB CLI on the live journal), a full or read-only disk. A caller that must go on whatever the journal does (an
order already sent must still get its stop) keeps the write and writes it when the journal is back
(`core.orders.OrderGateway.write_or_keep`)."""


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


class JournalTx:
    """The writes of one journal transaction. Obtain it from `Journal.transaction()`; every method is
    idempotent on its natural key and returns True when it recorded something new.

    ``con`` is the transaction's DuckDB connection. Bulk loads (an import, bench/journal_scale.py) may run
    ``INSERT ... SELECT`` on it, keeping the lock, the migration, the commit and the snapshot refresh of
    `Journal.transaction()`; they skip the checks of the ``record_*`` methods, so they must satisfy them
    themselves (aware times, finite prices, natural keys)."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con

    def _insert(self, sql: str, params: Sequence[Any]) -> bool:
        return bool(self.con.execute(sql, list(params)).fetchall())

    def record_equity_snapshot(
        self,
        session: dt.date,
        kind: str,
        net_liquidation: float,
        as_of: dt.datetime,
        *,
        account: str | None = None,
        available_funds: float | None = None,
        buying_power: float | None = None,
        cash: float | None = None,
        run_id: str | None = None,
    ) -> bool:
        """Record the day-start (`kind='day_start'`) or end-of-day equity (USD) of `session`, once.

        Raises:
            ValueError: a non-finite or non-positive NetLiquidation, a naive `as_of`, or an unknown kind.
        """
        if kind not in ("day_start", "end_of_day"):
            raise ValueError(f"kind must be 'day_start' or 'end_of_day', got {kind!r}")
        return self._insert(
            "INSERT INTO equity_snapshots (session, kind, account, net_liquidation, available_funds,"
            " buying_power, cash, as_of, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT DO NOTHING RETURNING 1",
            [
                session,
                kind,
                account,
                _finite(net_liquidation, "net_liquidation", positive=True),
                _finite(available_funds, "available_funds"),
                _finite(buying_power, "buying_power"),
                _finite(cash, "cash"),
                _aware(as_of, "as_of"),
                run_id,
            ],
        )

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
        return self._insert(
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
        ) or self.record_order_ids(order_ref, perm_id=perm_id, order_id=order_id)

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
        (`TERMINAL_ORDER_STATUSES`), which is never replaced by a stale earlier one.

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
            placeholders = ", ".join("?" for _ in TERMINAL_ORDER_STATUSES)
            self.con.execute(
                f"UPDATE orders SET status = ?, perm_id = coalesce(perm_id, ?), updated_at = current_timestamp"
                f" WHERE order_ref = ? AND status NOT IN ({placeholders})",
                [status, perm_id, order_ref, *TERMINAL_ORDER_STATUSES],
            )
        return new

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
        if self._insert(
            "INSERT INTO executions (exec_id, order_ref, perm_id, order_id, strategy, symbol, side, shares,"
            " price, commission, realized_pnl, exec_time, account, external)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING 1",
            params,
        ):
            return True
        return self._insert(
            "UPDATE executions SET commission = coalesce(commission, ?), realized_pnl = coalesce(realized_pnl, ?)"
            " WHERE exec_id = ? AND ((commission IS NULL AND ? IS NOT NULL)"
            "   OR (realized_pnl IS NULL AND ? IS NOT NULL)) RETURNING 1",
            [params[9], params[10], exec_id, params[9], params[10]],
        )

    def record_positions(
        self,
        as_of: dt.datetime,
        positions: Mapping[str, tuple[float, float | None]],
        *,
        source: str = "broker",
        account: str | None = None,
        run_id: str | None = None,
    ) -> int:
        """Record a position snapshot: `positions` maps symbol -> (quantity in shares, average cost USD or
        None). An empty mapping records nothing (a flat account is seen from the equity snapshot's time).
        Returns the number of rows recorded new."""
        _aware(as_of, "as_of")
        count = 0
        for symbol, (quantity, avg_cost) in sorted(positions.items()):
            count += self._insert(
                "INSERT INTO position_snapshots (as_of, source, symbol, quantity, avg_cost, account, run_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING 1",
                [as_of, source, symbol, _finite(quantity, f"quantity of {symbol}"),
                 _finite(avg_cost, f"avg_cost of {symbol}"), account, run_id],
            )
        return count

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

    def has_order(self, order_ref: str) -> bool:
        """Whether an order with this `order_ref` is recorded."""
        return bool(self.con.execute("SELECT 1 FROM orders WHERE order_ref = ?", [order_ref]).fetchall())

    def fetch(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple]:
        """Read inside this transaction (it sees the live file, including this transaction's own writes)."""
        return self.con.execute(sql, list(params or [])).fetchall()

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

    def strategy_fills(self, strategy: str, symbol: str | None = None,
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

    def session_decisions(self, strategy: str, session: dt.date) -> list[dict[str, Any]]:
        """The decisions of `strategy` on `session`, in time order: symbol, as_of, decision, reason, inputs
        (parsed)."""
        rows = self.con.execute(
            "SELECT symbol, as_of, decision, reason, inputs FROM signals WHERE strategy = ? AND session = ?"
            " ORDER BY as_of, symbol", [strategy, session]).fetchall()
        return [{"symbol": r[0], "as_of": r[1], "decision": r[2], "reason": r[3],
                 "inputs": json.loads(r[4]) if isinstance(r[4], str) else r[4]} for r in rows]

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
        cur = self.con.execute(
            "SELECT * FROM model_allowances WHERE symbol = ? ORDER BY decided_at DESC LIMIT 1", [symbol.upper()]
        )
        row = cur.fetchone()
        return None if row is None else dict(zip([d[0] for d in cur.description], row, strict=True))

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

    def record_daily_pnl(
        self,
        session: dt.date,
        strategy: str,
        *,
        realized_pnl: float,
        unrealized_pnl: float,
        commissions: float,
        net_pnl: float,
        as_of: dt.datetime,
        end_equity: float | None = None,
        run_id: str | None = None,
    ) -> bool:
        """Record one strategy's (or, `strategy='account'`, the account's) P&L of `session` in USD, once per
        (session, strategy): a repeat changes nothing.

        Raises:
            ValueError: a non-finite amount, negative commissions, a naive `as_of`.
        """
        if _finite(commissions, "commissions") < 0:
            raise ValueError(f"commissions must be >= 0 USD, got {commissions!r}")
        return self._insert(
            "INSERT INTO daily_pnl (session, strategy, realized_pnl, unrealized_pnl, commissions, net_pnl,"
            " end_equity, as_of, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING 1",
            [session, strategy, _finite(realized_pnl, "realized_pnl"), _finite(unrealized_pnl, "unrealized_pnl"),
             commissions, _finite(net_pnl, "net_pnl"), _finite(end_equity, "end_equity", positive=True),
             _aware(as_of, "as_of"), run_id],
        )


@dataclass
class Journal:
    """The journal at `path` (a DuckDB file), its read snapshot and its writer lock.

    Args:
        path: the live DuckDB file, written only through this class.
        lock_timeout: seconds a writer waits for the writer lock (other flows writing) before
            `JournalError`; a flow's write normally waits milliseconds.
    """

    path: Path
    lock_timeout: float = 60.0

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    @property
    def snapshot_path(self) -> Path:
        """The read snapshot people query (`tradeflow sql`, the DuckDB CLI with `-readonly`)."""
        return self.path.with_name(self.path.stem + ".read" + self.path.suffix)

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def _connect_live(self, deadline: float) -> duckdb.DuckDBPyConnection:
        delay = 0.005
        while True:
            try:
                return duckdb.connect(str(self.path), config=_STORAGE)
            except duckdb.IOException as exc:
                # another process (not a journal writer: those hold our lock) has the file open
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise JournalError(f"journal {self.path}: cannot open for writing: {exc}") from exc
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 0.25)

    @staticmethod
    def _migrate(con: duckdb.DuckDBPyConnection) -> None:
        con.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, description VARCHAR,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp)"
        )
        current = con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
        if current > SCHEMA_VERSION:
            raise JournalError(
                f"journal schema version {current} is newer than this code's {SCHEMA_VERSION}: upgrade tradeflow"
            )
        for version, description, sql in MIGRATIONS:
            if version > current:
                con.execute("BEGIN TRANSACTION")
                try:
                    con.execute(sql)
                    con.execute("INSERT INTO schema_version (version, description) VALUES (?, ?)",
                                [version, description])
                    con.execute("COMMIT")
                except Exception:
                    con.execute("ROLLBACK")
                    raise

    @property
    def _wal_path(self) -> Path:
        return self.path.with_name(self.path.name + ".wal")

    def _refresh_snapshot(self) -> Path | None:
        """Copy the live file to the snapshot and atomically replace it (the caller holds the writer lock).

        The previous snapshot is first hard-linked to ``<snapshot>.<pid>.retired`` so that ``os.replace`` does
        not free its blocks inside the lock (on ext4 that costs as much as the copy: about 50 ms for a 120 MB
        journal, bench/journal_scale.py); the caller unlinks it after releasing the lock (:meth:`_drop_retired`).
        Returns that link, or None when there was no snapshot or the file system has no hard links.
        """
        tmp = self.snapshot_path.with_name(self.snapshot_path.name + f".{os.getpid()}.tmp")
        shutil.copyfile(self.path, tmp)
        retired: Path | None = self.snapshot_path.with_name(self.snapshot_path.name + f".{os.getpid()}.retired")
        try:
            retired.unlink(missing_ok=True)
            os.link(self.snapshot_path, retired)
        except OSError:  # no snapshot yet, or no hard links here: os.replace frees the old one itself
            retired = None
        os.replace(tmp, self.snapshot_path)
        return retired

    def _drop_retired(self) -> None:
        """Unlink every retired snapshot link (this writer's, and any a crashed writer left), outside the lock.
        A reader that still has an old snapshot open keeps reading it: unlinking frees it only once closed."""
        for path in self.snapshot_path.parent.glob(self.snapshot_path.name + ".*.retired"):
            path.unlink(missing_ok=True)

    @contextmanager
    def transaction(self) -> Iterator[JournalTx]:
        """One write: everything recorded inside commits together, or nothing does (an exception rolls back
        and propagates). On exit the read snapshot shows it.

        Raises:
            JournalError: the writer lock or the file could not be had within `lock_timeout`, or the file's
                schema is newer than this code.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_timeout
        try:
            lock = FileLock(str(self.lock_path), timeout=self.lock_timeout)
            lock.acquire(poll_interval=0.005)  # filelock polls; its 50 ms default starves waiting writers
        except Timeout as exc:
            raise JournalError(
                f"journal {self.path}: another writer held the lock for more than {self.lock_timeout} s"
            ) from exc
        try:
            con = self._connect_live(deadline)
            try:
                self._migrate(con)
                con.execute("BEGIN TRANSACTION")
                try:
                    yield JournalTx(con)
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                con.execute("COMMIT")
                # a transaction that changed nothing (a read through tx.fetch, a repeated idempotent write) leaves
                # no write-ahead log: then the checkpoint and the full-file snapshot copy are skipped
                changed = self._wal_path.exists() and self._wal_path.stat().st_size > 0
                if changed:
                    con.execute("CHECKPOINT")
            finally:
                con.close()
            retired = self._refresh_snapshot() if changed or not self.snapshot_path.exists() else None
        finally:
            lock.release()
        if retired is not None:
            self._drop_retired()

    def ensure(self) -> None:
        """Create or migrate the journal and its read snapshot (an empty write)."""
        with self.transaction():
            pass

    @contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection on the read snapshot, with TimeZone America/New_York. It holds no lock
        that writers need, for as long as it stays open; it sees the writes completed before it opened."""
        if not self.snapshot_path.exists():
            self.ensure()
        con = duckdb.connect(str(self.snapshot_path), read_only=True)
        try:
            con.execute("SET TimeZone = 'America/New_York'")
            yield con
        finally:
            con.close()

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        """Run one read query on the snapshot and return its result (columns as the query names them).

        Raises:
            duckdb.Error: the SQL is wrong, or tries to write (the snapshot is read-only).
        """
        with self.reader() as con:
            return con.execute(sql, list(params or [])).df()


# --- reads for `tradeflow status` (core/status.py): named queries on the read snapshot ------------------------

def status_day_start_equity(journal: Journal, session: dt.date) -> float | None:
    """E0 of `session`: its day-start NetLiquidation (USD), or None when not recorded."""
    rows = journal.query("SELECT net_liquidation FROM equity_snapshots WHERE session = ? AND kind = 'day_start'",
                         [session])
    return float(rows.iloc[0, 0]) if len(rows) else None


def status_working_stops(journal: Journal, strategy: str, symbol: str) -> pd.DataFrame:
    """The strategy's stop orders on `symbol` not final in the journal: order_ref, quantity, stop_price (USD),
    status, as_of; newest first."""
    return journal.query(
        "SELECT order_ref, quantity, stop_price, status, as_of FROM orders WHERE strategy = ? AND symbol = ? "
        "AND order_type = 'STP' AND status NOT IN ('Filled', 'Cancelled', 'ApiCancelled', 'Inactive') "
        "ORDER BY as_of DESC", [strategy, symbol])


def status_latest_ema_state(journal: Journal, symbol: str) -> pd.DataFrame:
    """The last folded close of `symbol` (`ema_state`): one row (session, close, ema_fast, ema_slow, fast_span,
    slow_span, signal) or none."""
    return journal.query("SELECT session, close, ema_fast, ema_slow, fast_span, slow_span, signal FROM ema_state "
                         "WHERE symbol = ? ORDER BY session DESC LIMIT 1", [symbol])


def status_latest_signals(journal: Journal) -> pd.DataFrame:
    """The latest decision of each (strategy, symbol) (`v_latest_signals`): strategy, symbol, as_of, decision,
    signal, probability, price, reason."""
    return journal.query("SELECT strategy, symbol, as_of, decision, signal, probability, price, reason "
                         "FROM v_latest_signals")


def status_last_vix(journal: Journal, strategy: str, symbol: str) -> pd.DataFrame:
    """The latest decision of `strategy` on `symbol` that saw VIX (`signals.inputs`: vix_used, vix_current,
    vix_last_close, leverage): one row (as_of, vix_used, vix_current, vix_last_close, leverage) or none."""
    return journal.query(
        "SELECT as_of, TRY_CAST(inputs->>'vix_used' AS DOUBLE) AS vix_used, TRY_CAST(inputs->>'vix_current' AS "
        "DOUBLE) AS vix_current, TRY_CAST(inputs->>'vix_last_close' AS DOUBLE) AS vix_last_close, "
        "TRY_CAST(inputs->>'leverage' AS DOUBLE) AS leverage FROM signals WHERE strategy = ? AND symbol = ? "
        "AND coalesce(inputs->>'vix_used', inputs->>'vix_current', inputs->>'vix_last_close') IS NOT NULL "
        "ORDER BY as_of DESC LIMIT 1", [strategy, symbol])


def status_positions(journal: Journal) -> pd.DataFrame:
    """The journal's open positions by strategy (`v_open_positions`: strategy, symbol, quantity, avg_cost USD,
    entry_time) with the latest price a decision saw for the symbol (mark USD, mark_at; NULL when none)."""
    return journal.query(
        "WITH marks AS (SELECT symbol, price AS mark, as_of AS mark_at, row_number() OVER (PARTITION BY symbol "
        "ORDER BY as_of DESC) AS rn FROM signals WHERE price IS NOT NULL) "
        "SELECT p.strategy, p.symbol, p.quantity, p.avg_cost, p.entry_time, m.mark, m.mark_at "
        "FROM v_open_positions p LEFT JOIN marks m ON m.symbol = p.symbol AND m.rn = 1 "
        "WHERE p.quantity <> 0 ORDER BY p.strategy, p.symbol")


def status_last_daily_pnl(journal: Journal) -> pd.DataFrame:
    """`daily_pnl` of the latest session recorded: session, strategy, realized_pnl, unrealized_pnl, commissions,
    net_pnl, end_equity (USD)."""
    return journal.query("SELECT session, strategy, realized_pnl, unrealized_pnl, commissions, net_pnl, end_equity "
                         "FROM daily_pnl WHERE session = (SELECT max(session) FROM daily_pnl) ORDER BY strategy")


def status_open_breaks(journal: Journal) -> pd.DataFrame:
    """Unresolved position breaks: symbol, detected_session, broker_quantity, journal_quantity (shares)."""
    return journal.query("SELECT symbol, detected_session, broker_quantity, journal_quantity FROM position_breaks "
                         "WHERE resolved_at IS NULL ORDER BY symbol, detected_session")


def status_champions(journal: Journal) -> pd.DataFrame:
    """The MTF champion of each symbol as journaled (`models`): symbol, version, updated_at."""
    return journal.query("SELECT symbol, version, updated_at FROM models WHERE status = 'champion' ORDER BY symbol")


def status_last_runs(journal: Journal) -> pd.DataFrame:
    """The last run's end of each deployment (`flow_events`, completed / failed / skipped, or started when it
    has not ended): deployment, event, as_of, outcome, recorded_at."""
    return journal.query(
        "SELECT deployment, event, as_of, outcome, recorded_at FROM (SELECT *, row_number() OVER (PARTITION BY "
        "deployment ORDER BY as_of DESC, recorded_at DESC, CASE event WHEN 'started' THEN 1 ELSE 0 END) AS rn "
        "FROM flow_events) WHERE rn = 1 ORDER BY deployment")


# --- reads for the charts (core/charts.py: the flows' artifacts and `tradeflow plot`) ----------------------------

def chart_ema_state(journal: Journal, symbol: str) -> pd.DataFrame:
    """Every folded close of `symbol` (`ema_state`): session, close, ema_fast, ema_slow, fast_span, slow_span."""
    return journal.query("SELECT session, close, ema_fast, ema_slow, fast_span, slow_span FROM ema_state "
                         "WHERE symbol = ? ORDER BY session", [symbol])


def chart_fills(journal: Journal, strategy: str, since: dt.datetime | None = None,
                until: dt.datetime | None = None) -> pd.DataFrame:
    """The strategy's executions (`v_fills`) in [since, until): symbol, exec_time, side ('BOT'/'SLD'), shares,
    price (USD), order_ref."""
    return journal.query(
        "SELECT symbol, exec_time, side, shares, price, order_ref FROM v_fills WHERE strategy_name = ? "
        "AND exec_time >= coalesce(?, TIMESTAMPTZ '1900-01-01') AND exec_time < coalesce(?, TIMESTAMPTZ "
        "'9999-01-01') ORDER BY exec_time", [strategy, since, until])


def chart_stop_orders(journal: Journal, strategy: str, symbol: str) -> pd.DataFrame:
    """The strategy's stop orders on `symbol` (`orders`): as_of, order_ref, quantity, stop_price (USD), status."""
    return journal.query("SELECT as_of, order_ref, quantity, stop_price, status FROM orders WHERE strategy = ? "
                         "AND symbol = ? AND order_type = 'STP' ORDER BY as_of", [strategy, symbol])


def chart_session_signals(journal: Journal, strategy: str, session: dt.date) -> pd.DataFrame:
    """The strategy's decisions of `session` (`signals`): symbol, as_of, decision, probability, price."""
    return journal.query("SELECT symbol, as_of, decision, probability, price FROM signals WHERE strategy = ? "
                         "AND session = ? ORDER BY as_of, symbol", [strategy, session])


def chart_equity(journal: Journal, until: dt.date | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every equity snapshot: as_of, session, kind ('day_start'/'end_of_day'), net_liquidation USD; `daily_pnl`
    rows: session, strategy, net_pnl USD) up to session `until` inclusive (all when None), in time order."""
    points = journal.query("SELECT as_of, session, kind, net_liquidation FROM equity_snapshots WHERE session <= "
                           "coalesce(?, DATE '9999-01-01') ORDER BY as_of, kind DESC", [until])
    pnl = journal.query("SELECT session, strategy, net_pnl FROM daily_pnl WHERE session <= coalesce(?, "
                        "DATE '9999-01-01') ORDER BY session, strategy", [until])
    return points, pnl
