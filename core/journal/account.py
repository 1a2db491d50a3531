"""Account and equity: equity snapshots, position snapshots, the daily P&L."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from core.journal.base import JournalError, TxBase, _aware, _finite, _json  # noqa: F401


class AccountTx(TxBase):
    """Writes and reads of `equity_snapshots`, `position_snapshots` and `daily_pnl`."""

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



    # ---- named reads ------------------------------------------------------------------------------------------

    def day_start_equity(self, session: dt.date) -> float | None:
        """E0: the day-start NetLiquidation (USD) recorded for `session`, or None when none is."""
        row = self._one("SELECT net_liquidation FROM equity_snapshots WHERE session = ? AND kind = 'day_start'",
                        [session])
        return float(row[0]) if row else None

    def previous_equity(self, session: dt.date) -> float | None:
        """NetLiquidation (USD) at the end of the last session before `session` that has one, else `session`'s
        day-start, else None."""
        row = self._one("SELECT net_liquidation FROM equity_snapshots WHERE (session < ? AND kind = 'end_of_day')"
                        " OR (session = ? AND kind = 'day_start')"
                        " ORDER BY kind = 'end_of_day' DESC, session DESC LIMIT 1", [session, session])
        return float(row[0]) if row else None

    def equity_curve(self, until: dt.date) -> list[dict[str, Any]]:
        """`v_equity_curve` up to session `until`: dicts of session, equity (USD) and drawdown (a fraction <= 0),
        oldest first."""
        return self._rows("SELECT session, equity, drawdown FROM v_equity_curve WHERE session <= ? ORDER BY session",
                          [until])
