"""The EMA daily stop's second line, run by every 5-minute `mtf-signal` run (strategies.md, "Daily stop").

The first line is the stop order at the broker (placed by `equity-snapshot` and `ema-entry`), which works even
when this system is down. The second: when equity (NetLiquidation) is at or below `(1 - daily_stop_fraction) *
E0` and the SMH position is still open (the stop order has not done it), cancel the working stop order and sell
the position at market, once per session (orderRef `ema-SMH-<session>-stop2`).
"""

from __future__ import annotations

from typing import Any

from core.broker import Broker, OrderRequest
from core.orders import order_ref
from core.strategies.ema import daily_stop_hit
from tasks.runtime import FlowRun


def day_start_equity(run: FlowRun) -> float | None:
    """E0: the session's recorded day-start NetLiquidation (USD), or None when none is recorded."""
    if run.session is None:
        return None
    with run.journal.transaction() as tx:
        rows = tx.fetch("SELECT net_liquidation FROM equity_snapshots WHERE session = ? AND kind = 'day_start'",
                        [run.session.date])
    return float(rows[0][0]) if rows else None


def ema_stop_second_line(run: FlowRun, broker: Broker) -> dict[str, Any]:
    """Check the daily stop and exit SMH when it is hit and the stop order has not exited; returns what was
    found and done (keys `action` ('none', 'exit', 'unchecked'), `reason`, and the inputs), which the caller
    puts in its artifact. An exit is journaled as a signal of strategy 'ema_stop' with its inputs.

    Raises:
        core.orders.OrderBlockedError, core.broker.BrokerError: from sending the exit.
    """
    symbol = run.settings.ema_symbol
    qty = sum(p.quantity for p in broker.positions() if p.symbol == symbol)
    if qty <= 0:
        return {"action": "none", "reason": f"no {symbol} position"}
    e0 = day_start_equity(run)
    if e0 is None:
        return {"action": "unchecked", "reason": f"no day-start equity recorded for {run.session.date if run.session else 'this day'}: "
                "the stop's second line cannot be checked (the stop order at the broker still works)"}
    equity = broker.account_values().net_liquidation
    fraction = run.settings.daily_stop_fraction
    inputs = {"equity": equity, "e0": e0, "stop_fraction": fraction, "threshold": (1 - fraction) * e0,
              "position_qty": qty}
    if not daily_stop_hit(equity, e0, fraction):
        return {"action": "none", "reason": f"equity {equity:,.2f} USD above {(1 - fraction) * e0:,.2f} USD", **inputs}
    gateway = run.gateway(broker)
    for o in broker.open_orders():
        if o.symbol == symbol and o.order_type == "STP" and o.action == "SELL":
            gateway.record_status(broker.cancel_order(o.order_id), message="cancelled by the stop's second line")
    qty = sum(p.quantity for p in broker.positions() if p.symbol == symbol)  # the stop may have filled meanwhile
    if qty <= 0:
        return {"action": "none", "reason": "the stop order exited first", **inputs}
    ref = order_ref("ema", symbol, run.session.date, "stop2")
    reason = (f"daily stop: equity {equity:,.2f} USD <= {(1 - fraction):.2f} x E0 {e0:,.2f} USD and {symbol} still "
              f"long {qty:g} shares: sell at market")
    with run.journal.transaction() as tx:
        tx.record_signal("ema_stop", symbol, run.as_of, run.session.date, "SELL", reason, quantity=qty,
                         order_ref=ref, inputs=inputs, run_id=run.run_id)
    info = gateway.submit(OrderRequest(symbol=symbol, action="SELL", quantity=int(qty), order_ref=ref),
                          strategy="ema", intent="stop-exit", session=run.session.date, as_of=run.as_of)
    return {"action": "exit", "reason": reason, "order_ref": ref, "status": info.status, **inputs}
