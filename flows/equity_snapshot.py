"""Deployment `equity-snapshot` (at the open, 09:30 America/New_York): the session's day-start equity E0 and
positions, and the day's protective stop for the EMA strategy's SMH position (strategies.md, "Day start" and
"Daily stop").

1. Refuse a late run (more than `late_run_max_minutes` after `as_of` on the broker's clock): SkippedLate.
2. Record E0 = NetLiquidation (with AvailableFunds, BuyingPower, cash) as the session's `day_start` equity
   snapshot, and the broker's positions, once per session: a rerun records nothing new and uses the E0 first
   recorded.
3. When the previous session's `ema-update` sent an exit for this open (`ema-SMH-<previous>-exit-open`), wait
   (bounded) until it has filled; no stop is placed for a position that is being sold.
4. With an SMH position of q shares: cancel yesterday's stop and place today's, STP SELL q GTC at
   `stop_price(P_ref, E0, q)` with P_ref the SMH price now (orderRef `ema-SMH-<session>-stop`). Flat: cancel any
   EMA stop left working (it would open a short).

No price or a NaN one: the run fails saying so (journaled in `flow_events`), and places no stop.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from prefect import flow

from core.calendar import previous_session
from tasks.ema import (
    HalfKnownStateError,
    arm_stop,
    cancel_ema_stops,
    position_qty,
    report,
    require_session,
    symbol_of,
    sync_fills,
    wait_for_ref_fill,
)
from tasks.run_policy import run_policy
from tasks.runtime import flow_run
from tasks.ui import run_name


@flow(name="equity-snapshot", flow_run_name=run_name("equity-snapshot"), **run_policy("equity-snapshot"))
def equity_snapshot(as_of: datetime | None = None) -> dict[str, Any] | Any:
    """Record the day-start equity and positions; arm the day's SMH stop. `as_of` (aware; default: the run's
    scheduled start) must fall in a session's regular hours. Returns a summary dict, or the SkippedLate state."""
    with flow_run("equity-snapshot", as_of) as run:
        session = require_session(run, lambda s: (s.open, s.close), "(the session's regular hours)")
        symbol = symbol_of(run)
        with run.broker() as broker:
            late = run.refuse_if_late(broker, run.settings.late_run_max_minutes)
            if late is not None:
                return late
            gateway = run.gateway(broker)
            account = broker.account_values()
            if not (math.isfinite(account.net_liquidation) and account.net_liquidation > 0):
                raise HalfKnownStateError(f"NetLiquidation {account.net_liquidation!r} USD is not usable: no "
                                          "snapshot, no stop")
            positions = broker.positions()
            with run.journal.transaction() as tx:
                new = tx.record_equity_snapshot(session.date, "day_start", account.net_liquidation, run.as_of,
                                                account=account.account, available_funds=account.available_funds,
                                                buying_power=account.buying_power, cash=account.cash,
                                                run_id=run.run_id)
                tx.record_positions(run.as_of, {p.symbol: (p.quantity, p.avg_cost) for p in positions},
                                    account=account.account, run_id=run.run_id)
                e0 = tx.day_start_equity(session.date)
            summary: dict[str, Any] = {"session": str(session.date), "e0": e0, "snapshot_new": new,
                                       "positions": {p.symbol: p.quantity for p in positions}}

            exit_ref = _pending_exit(run, previous_session(session.date).date)
            if exit_ref is not None:
                ref, quantity = exit_ref
                filled = wait_for_ref_fill(run, broker, ref, quantity)
                sync_fills(run, broker, gateway)
                summary["exit_at_open"] = {"order_ref": ref, "quantity": quantity, "filled": filled}
                if filled < quantity:
                    raise HalfKnownStateError(
                        f"the exit for this open {ref} ({quantity:g} shares) has filled {filled:g} shares after "
                        f"{run.settings.ema_fill_timeout_seconds:g} s: it is still working, so no stop is placed "
                        "(check the order at the broker)")
            else:
                sync_fills(run, broker, gateway)

            qty = position_qty(broker, symbol)
            summary["position_qty"] = qty
            if qty == 0:
                cancelled = cancel_ema_stops(run, broker, gateway, why=f"no {symbol} position at the open")
                summary["stop"] = {"status": "none", "cancelled": [c.order_ref for c in cancelled]}
                outcome = f"E0 {e0:,.2f} USD; no {symbol} position, no stop"
            else:
                quote = broker.current_price(symbol)
                price = quote.price
                if price is None or not math.isfinite(price) or price <= 0 or quote.delayed:
                    raise HalfKnownStateError(f"no usable {symbol} price ({price!r}, delayed={quote.delayed}) for "
                                              f"the stop of {qty} shares: no stop placed")
                stop = arm_stop(run, broker, gateway, intent="stop", qty=qty, p_ref=price, e0=e0,
                                e0_source="day_start", context=f"day start {session.date}, {qty} {symbol} held")
                summary["stop"] = stop
                outcome = (f"E0 {e0:,.2f} USD; {qty} {symbol}: stop {stop['order_ref']} at "
                           f"{stop['stop_price']} USD ({stop['status']})")
        report(run, f"equity-snapshot {session.date}", outcome, summary, summary)
        return summary


def _pending_exit(run, previous: Any) -> tuple[str, float] | None:
    """(orderRef, shares) of the exit the previous session's ema-update sent for this open, if any."""
    with run.journal.transaction() as tx:
        return tx.order_of(strategy="ema", intent="exit-open", symbol=symbol_of(run), session=previous)
