"""The EMA daily stop's second line, run by every 5-minute `mtf-signal` run (strategies.md, "Daily stop").

The first line is the stop order at the broker (placed by `equity-snapshot` and after an `ema-entry` fill),
which works even when this system is down. The second: when the SMH position is still open and the stop is hit
(`core.strategies.ema.second_line_check`: equity <= (1 - daily_stop_fraction) * E0 for a position held since the
open; the price at or below the entry's stop price for a position entered this session), cancel the working stop
orders and sell the position at market, once per session (orderRef `ema-SMH-<session>-stop2`).

It acts only while the session is open (a market order after the close would wait for the next open, while the
next morning's equity snapshot arms a new stop), and never on half-known state: no E0 recorded, a position that
is not a long whole number, or no usable price make it report `unchecked` (the stop order still works) instead of
failing the calling flow. Broker errors propagate.
"""

from __future__ import annotations

from typing import Any

from core.broker import Broker
from core.strategies.ema import second_line_check
from tasks.ema import (
    HalfKnownStateError,
    day_start_equity,
    ema_ref,
    order_known,
    position_qty,
    record_signal,
    sell_position,
    symbol_of,
)
from tasks.runtime import FlowRun


def ema_stop_second_line(run: FlowRun, broker: Broker) -> dict[str, Any]:
    """Check the daily stop and exit SMH when it is hit and the stop order has not exited.

    Returns what was found and done, for the caller's artifact: `action` ('none', 'exit', 'unchecked'),
    `reason`, and the inputs (equity, E0, threshold, position, prices). An exit is journaled first as a signal
    of strategy 'ema_stop2' with its inputs and the exit's orderRef.

    Raises:
        core.orders.OrderBlockedError, core.broker.BrokerError: from the broker or from sending the exit.
    """
    symbol = symbol_of(run)
    session = run.session
    if session is None:
        return {"action": "none", "reason": f"{run.as_of.date()} is not a session day"}
    if not session.open <= run.as_of < session.close:
        return {"action": "none", "reason": f"outside the session ({session.open:%H:%M}-{session.close:%H:%M}): "
                                            "the stop order at the broker protects the position"}
    try:
        qty = position_qty(broker, symbol)
    except HalfKnownStateError as exc:
        return {"action": "unchecked", "reason": str(exc)}
    if qty == 0:
        return {"action": "none", "reason": f"no {symbol} position"}
    e0 = day_start_equity(run)
    if e0 is None:
        return {"action": "unchecked", "reason": f"no day-start equity recorded for {session.date}: the stop's "
                                                 "second line cannot be checked (the stop order at the broker works)"}
    equity = broker.account_values().net_liquidation
    entry_ref = ema_ref(run, "entry")
    entry = [e for e in broker.executions() if e.order_ref == entry_ref]
    entry_price = sum(e.shares * e.price for e in entry) / sum(e.shares for e in entry) if entry else None
    price = broker.current_price(symbol).price if entry_price is not None else None
    fraction = run.settings.daily_stop_fraction
    try:
        check = second_line_check(equity=equity, e0=e0, position_qty=qty, stop_fraction=fraction, price=price,
                                  entry_price=entry_price)
    except ValueError as exc:
        return {"action": "unchecked", "reason": f"the stop's second line cannot be checked: {exc}"}
    inputs = {"equity": equity, "e0": e0, "stop_fraction": fraction, "position_qty": qty, "price": price,
              "entry_price": entry_price, "reference": check.reference, "threshold_equity": check.threshold_equity,
              "threshold_price": check.threshold_price}
    if not check.hit:
        return {"action": "none", "reason": check.reason, **inputs}
    ref = ema_ref(run, "stop2")
    reason = f"daily stop, second line: {check.reason}; {symbol} still long {qty} shares: sell at market"
    if not order_known(run, ref):
        record_signal(run, "ema_stop2", "SELL", reason, price=price, quantity=qty, ref=ref, inputs=inputs)
    info, what = sell_position(run, broker, run.gateway(broker), ref=ref, intent="stop-exit", shares=qty,
                               why="the stop's second line exits")
    if info is None:
        return {"action": "none", "reason": f"{reason}; {what}", **inputs}
    return {"action": "exit", "reason": f"{reason}; {what}", "order_ref": ref, "status": info.status, **inputs}
