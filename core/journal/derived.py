"""Tables the writes keep up to date so that the P&L views answer fast on a large journal (issue #14).

`round_trips` holds what `v_round_trips_computed` (the round-trip walk over every fill) gives, and
`pnl_by_symbol_day` each symbol's realized P&L, commissions and fills a strategy and session. Both are
recomputed for one symbol whenever a write changes that symbol's fills (`refresh_symbol`, in the same
transaction, so a query never sees them disagree with `executions`), which costs what that symbol's history
costs, not the journal's. `v_round_trips`, `v_daily_pnl` and `v_open_positions` read them.
"""

from __future__ import annotations

from typing import Any

_SYMBOL_DAILY = """
WITH realized AS (
    SELECT strategy, symbol, CAST(timezone('America/New_York', exit_time) AS DATE) AS session,
           sum(gross_pnl) AS realized_gross_pnl, count(*) AS round_trips_closed
    FROM round_trips WHERE closed AND {where} GROUP BY ALL
), costs AS (
    SELECT strategy_name AS strategy, symbol, session, sum(coalesce(commission, 0)) AS commissions, count(*) AS fills
    FROM v_fills WHERE {where} GROUP BY ALL
)
SELECT coalesce(r.session, c.session) AS session, coalesce(r.strategy, c.strategy) AS strategy,
       coalesce(r.symbol, c.symbol) AS symbol,
       coalesce(r.realized_gross_pnl, 0) AS realized_gross_pnl, coalesce(c.commissions, 0) AS commissions,
       coalesce(r.round_trips_closed, 0) AS round_trips_closed, coalesce(c.fills, 0) AS fills
FROM realized r FULL OUTER JOIN costs c ON r.strategy = c.strategy AND r.symbol = c.symbol AND r.session = c.session
"""


def refresh_symbol(con: Any, symbol: str) -> None:
    """Recompute `round_trips` and `pnl_by_symbol_day` of `symbol` from its fills, on `con` (inside the caller's
    transaction)."""
    con.execute("DELETE FROM round_trips WHERE symbol = ?", [symbol])
    con.execute("INSERT INTO round_trips SELECT * FROM v_round_trips_computed WHERE symbol = ?", [symbol])
    con.execute("DELETE FROM pnl_by_symbol_day WHERE symbol = ?", [symbol])
    con.execute("INSERT INTO pnl_by_symbol_day " + _SYMBOL_DAILY.format(where="symbol = $1"), [symbol])


def rebuild_all(con: Any) -> None:
    """Recompute both tables for every symbol (after a bulk load, or in the migration that creates them)."""
    con.execute("DELETE FROM round_trips")
    con.execute("INSERT INTO round_trips SELECT * FROM v_round_trips_computed")
    con.execute("DELETE FROM pnl_by_symbol_day")
    con.execute("INSERT INTO pnl_by_symbol_day " + _SYMBOL_DAILY.format(where="true"))


def derived_tables(schema_v1: str) -> str:
    """Migration 6: the two tables, filled from the journal as it is, and the views reading them. The walk is
    the first release's `v_round_trips`, kept as `v_round_trips_computed`."""
    start = schema_v1.index("CREATE VIEW v_round_trips AS")
    end = schema_v1.index("ORDER BY entry_time;", start)
    walk = schema_v1[start:end].replace("CREATE VIEW v_round_trips AS", "CREATE VIEW v_round_trips_computed AS")
    return walk + ";\n" + """
CREATE TABLE round_trips AS SELECT * FROM v_round_trips_computed;
CREATE TABLE pnl_by_symbol_day (
    session             DATE     NOT NULL,   -- New York date of the exit (realized) or of the fills (costs)
    strategy            VARCHAR  NOT NULL,
    symbol              VARCHAR  NOT NULL,
    realized_gross_pnl  DOUBLE   NOT NULL,   -- USD, of the round trips closed that session
    commissions         DOUBLE   NOT NULL,   -- USD, of the session's fills
    round_trips_closed  BIGINT   NOT NULL,
    fills               BIGINT   NOT NULL
);
INSERT INTO pnl_by_symbol_day """ + _SYMBOL_DAILY.format(where="true") + """;

CREATE OR REPLACE VIEW v_round_trips AS SELECT * FROM round_trips ORDER BY entry_time;

CREATE OR REPLACE VIEW v_daily_pnl AS
SELECT session, strategy,
       sum(realized_gross_pnl) AS realized_gross_pnl,
       sum(commissions) AS commissions,
       sum(realized_gross_pnl) - sum(commissions) AS realized_net_pnl,
       sum(round_trips_closed)::BIGINT AS round_trips_closed,
       sum(fills)::BIGINT AS fills
FROM pnl_by_symbol_day GROUP BY session, strategy
ORDER BY session, strategy;
"""
