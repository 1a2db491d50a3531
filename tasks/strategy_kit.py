"""What a strategy's flow takes from the shared runtime besides `tasks.runtime.flow_run`: its registry entry, the
completed bars of a symbol, the broker's position, a journaled decision.

A strategy added as a unit (`strategies/<name>/`, `tradeflow new-strategy`) builds its flow from these and from
`flow_run` (the journal's started/completed/failed, `run.broker()` with the entry's client id,
`run.refuse_if_late` (the late guard), `run.gateway(broker)` (the one order path, `core.orders.OrderGateway`:
kill switch, breaks, journal first, idempotent by orderRef), `run.publish` (the UI artifact)); its decisions stay
in its pure rules module.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from core.broker import Broker
from core.registry import DeploymentEntry, default_registry
from tasks.runtime import FlowRun


class HalfKnownPositionError(RuntimeError):
    """The broker's position of a symbol is not a whole number of shares: decide nothing on it."""


class BadBarsError(ValueError):
    """Bars with NaN, non-positive or out-of-order values, or none at all; the message names the symbol and row."""


def entry_of(run: FlowRun) -> DeploymentEntry:
    """The registry entry of the run's deployment (its parameters, whether it sends orders).

    Raises:
        ValueError: the deployment is not in the registry.
    """
    return default_registry().deployment(run.deployment)


def completed_bars(broker: Broker, symbol: str, as_of: dt.datetime, minutes: int = 5,
                   duration: str = "2 D") -> pd.DataFrame:
    """The `minutes`-minute bars of `symbol` (regular hours) that ENDED at or before `as_of` (a bar is stamped
    with its start; the one ending at a run's scheduled time may still be forming when the run starts: DESIGN.md),
    checked: finite, positive prices, ascending times.

    Raises:
        BadBarsError: none, or a bad row (named).
        core.broker.BrokerError: the broker's.
    """
    size = {5: "5 mins", 60: "1 hour"}.get(minutes)
    if size is None:
        raise ValueError(f"bars of {minutes} minutes are not served (5 or 60)")
    bars = broker.historical_bars(symbol, size, duration, end=as_of)
    bars = bars[bars.index + pd.Timedelta(minutes=minutes) <= as_of]
    if bars.empty:
        raise BadBarsError(f"{symbol}: no {minutes}-minute bar ended by {as_of.isoformat()}")
    prices = bars[["open", "high", "low", "close"]]
    bad = ~(prices.apply(lambda c: c.map(lambda v: math.isfinite(v) and v > 0))).all(axis=1)
    if bad.any():
        raise BadBarsError(f"{symbol}: bad prices in the bar of {bad[bad].index[0].isoformat()}: "
                           f"{prices[bad].iloc[0].to_dict()}")
    if not bars.index.is_monotonic_increasing or bars.index.has_duplicates:
        raise BadBarsError(f"{symbol}: bars out of order or duplicated")
    return bars


def position_qty(broker: Broker, symbol: str) -> int:
    """The account's position of `symbol` in shares (negative when short).

    Raises:
        HalfKnownPositionError: a fractional or non-finite position.
    """
    raw = sum(p.quantity for p in broker.positions() if p.symbol.upper() == symbol.upper())
    if not math.isfinite(raw) or raw != int(raw):
        raise HalfKnownPositionError(f"{symbol} position {raw!r} shares at the broker is not a whole number: "
                                     "decide nothing on it (check the account)")
    return int(raw)


def record_decision(run: FlowRun, strategy: str, symbol: str, decision: str, reason: str, *,
                    signal: str | None = None, probability: float | None = None, price: float | None = None,
                    quantity: float | None = None, order_ref: str | None = None,
                    inputs: Mapping[str, Any] | None = None) -> bool:
    """Journal one decision (`signals`: BUY, SELL, HOLD or NO_TRADE) with its inputs, once per (strategy,
    symbol, as_of); True when it was new. The run must be on a session (`run.session`)."""
    if run.session is None:
        raise ValueError(f"{run.deployment}: as_of {run.as_of.isoformat()} is not on a session: no decision")
    with run.journal.transaction() as tx:
        return tx.record_signal(strategy, symbol, run.as_of, run.session.date, decision, reason, signal=signal,
                                probability=probability, price=price, quantity=quantity, order_ref=order_ref,
                                inputs=inputs, run_id=run.run_id)
