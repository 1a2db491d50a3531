"""The journal's schema, defined once: the migrations in order, and applying them.

`MIGRATIONS` holds (version, description, SQL); a schema change appends one entry and never edits an old one,
so a journal written by any earlier release migrates forward when it is first opened (`migrate`). The version
applied is in `schema_version`. Times are TIMESTAMPTZ; session dates are New York dates; money is USD;
quantities are shares.
"""

from __future__ import annotations

from typing import Any

from core.journal.base import JournalError
from core.journal.derived import derived_tables
from core.order_status import OrderStatus

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


_SCHEMA_V7 = """
CREATE TABLE order_links (                 -- a bracket child and its parent (IB's parentId), journaled when sent
    order_ref        VARCHAR     PRIMARY KEY,   -- the child (a stop-loss or take-profit)
    parent_ref       VARCHAR     NOT NULL,      -- its parent, the bracket's entry
    parent_order_id  BIGINT,                    -- the parent's orderId (the child's parentId at IB)
    parent_perm_id   BIGINT,
    oca_group        VARCHAR,                   -- the OCA group the children share
    recorded_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);
CREATE TABLE order_changes (               -- a working order's quantity changed at the broker (IB's modify)
    order_ref        VARCHAR     NOT NULL,
    quantity_before  DOUBLE      NOT NULL,      -- total shares (filled ones included), as IB's totalQuantity
    quantity_after   DOUBLE      NOT NULL,
    reason           VARCHAR     NOT NULL,
    event_time       TIMESTAMPTZ NOT NULL,
    recorded_at      TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (order_ref, quantity_after, event_time)
);
"""


def _order_statuses() -> str:
    """The order-status vocabulary (`core.order_status.OrderStatus`) as a table people can join."""
    rows = ", ".join(
        f"('{status}', {str(status in OrderStatus.DONE).lower()}, '{text.replace(chr(39), chr(39) * 2)}')"
        for status, text in OrderStatus.DESCRIPTIONS.items())
    return f"""
CREATE TABLE order_statuses (
    status       VARCHAR PRIMARY KEY,   -- IB's orderStatus, or 'Created' (journaled, not yet acknowledged)
    done         BOOLEAN NOT NULL,      -- final: the order never changes again
    description  VARCHAR NOT NULL
);
INSERT INTO order_statuses VALUES {rows};
"""


MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (1, "tables and views of the first journal", _SCHEMA_V1),
    (2, "operator controls (halt, resume, flatten, resolve), position breaks, daily P&L", _SCHEMA_V2),
    (3, "position adjustments recorded when a break is resolved; the journal's position per symbol", _SCHEMA_V3),
    (4, "operator allowances of MTF symbols past the edge gate", _SCHEMA_V4),
    (5, "the order-status vocabulary (order_statuses)", _order_statuses()),
    (6, "round trips and P&L a symbol and session kept in tables by the writes (fast views)", derived_tables(_SCHEMA_V1)),
    (7, "bracket children linked to their parent (order_links); quantity changes of working orders (order_changes)",
     _SCHEMA_V7),
)
"""(version, description, SQL) in order; a new schema change appends one entry and never edits old ones."""

SCHEMA_VERSION = MIGRATIONS[-1][0]

_STORAGE = {"storage_compatibility_version": "v1.5.0"}
"""Files are written in the v1.5 storage format so that the DuckDB CLI (duckdb-cli 1.5 is the newest on the
package index, and it cannot read DuckDB 2.0's default format) opens the read snapshot."""



def migrate(con: Any) -> int:
    """Apply every migration newer than the file's version, each in its own transaction, on the DuckDB
    connection `con` (read-write). Returns the version the file is at afterwards.

    Raises:
        JournalError: the file's schema is newer than this code's (an older tradeflow opened a newer journal).
    """
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, description VARCHAR,"
        " applied_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp)"
    )
    current = con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
    import core.journal as pkg  # the package's MIGRATIONS: a test may append a step there

    migrations, latest = pkg.MIGRATIONS, pkg.SCHEMA_VERSION
    if current > latest:
        raise JournalError(f"journal schema version {current} is newer than this code's {latest}: upgrade tradeflow")
    for version, description, sql in migrations:
        if version > current:
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute(sql)
                con.execute("INSERT INTO schema_version (version, description) VALUES (?, ?)", [version, description])
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise
            current = version
    return current
