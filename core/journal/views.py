"""Named reads of the read snapshot for people's screens: `tradeflow status` (core/status.py) and the charts
(core/charts.py: the flows' artifacts and `tradeflow plot`). Each takes a `Journal` and returns a DataFrame (or
a value), read through `Journal.query`, so it sees every write completed before it was called."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only annotations: `tradeflow sql` imports the journal without pandas (start-up time)
    import pandas as pd

from core.journal.store import Journal

__all__ = ["status_day_start_equity", "status_working_stops", "status_latest_ema_state", "status_latest_signals", "status_last_vix", "status_positions", "status_last_daily_pnl", "status_open_breaks", "status_champions", "status_last_runs", "chart_ema_state", "chart_fills", "chart_stop_orders", "chart_session_signals", "chart_equity"]


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
