"""The signals strategy's I/O steps (broker, journal, signal source), each taking plain values and the run; the
decisions are in `strategies.signals.rules`.

Order refs (`core.orders.order_ref`, one set per ticker and run, so a rerun sends nothing twice):
`signals-<SYM>-<yyyymmddThhmm>-close` (closing the position), `-entry` (a new position), `-scale` (a scale-in),
`-sl` / `-tp` (the stop-loss STP and take-profit LMT, GTC, in the OCA group `signals-<SYM>-<stamp>-oca`, type 2:
a fill of one reduces the other by its shares). The decision journaled before the orders lists every ref of the
step with the OCA group and the refs of the pair it replaces (`inputs.orders`): the linked orders are linked there.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

from core.broker import Broker, BrokerError, BrokerTimeoutError, OrderInfo, OrderNotFilledError, OrderRequest
from core.orders import OrderGateway, order_ref
from strategies.signals.rules import Bracket, Step
from tasks.runtime import FlowRun

STRATEGY = "signals"
OCA_TYPE = 2
"""IB's OCA type of a stop-loss/take-profit pair: a fill reduces the sibling by the shares filled (with block)."""


class SignalsStepError(RuntimeError):
    """A step at the broker did not complete (an entry not filled in time, ...); the message says which, and what
    was done to protect what was filled."""


@dataclass(frozen=True)
class Refs:
    """The orderRefs of one ticker's run (module docstring)."""

    close: str
    entry: str
    scale: str
    stop: str
    target: str
    oca: str

    @classmethod
    def of(cls, symbol: str, as_of: dt.datetime) -> "Refs":
        r = lambda intent: order_ref(STRATEGY, symbol, as_of, intent)  # noqa: E731
        return cls(r("close"), r("entry"), r("scale"), r("sl"), r("tp"), r("oca"))


def prefix(symbol: str) -> str:
    return f"{STRATEGY}-{symbol}-"


def sync_orders(gateway: OrderGateway, broker: Broker) -> int:
    """Journal today's executions of the strategy's orders (a stop-loss or take-profit that filled between runs)
    and the final state of its orders (an OCA sibling cancelled). Returns how many executions were new."""
    fills = [e for e in broker.executions() if e.order_ref.startswith(f"{STRATEGY}-")]
    count = gateway.record_executions(fills, STRATEGY)
    for info in broker.completed_orders():
        if info.order_ref.startswith(f"{STRATEGY}-"):
            gateway.record_status(info)
    return count


def bracket_of(symbol: str, open_orders: list[OrderInfo]) -> Bracket | None:
    """The working stop-loss/take-profit pair of `symbol` (the latest by orderRef), or None.

    Raises:
        SignalsStepError: only one side of a pair works (the other was cancelled by hand?): decide nothing.
    """
    mine = [o for o in open_orders if o.order_ref.startswith(prefix(symbol))]
    stops = sorted((o for o in mine if o.order_ref.endswith("-sl")), key=lambda o: o.order_ref)
    targets = sorted((o for o in mine if o.order_ref.endswith("-tp")), key=lambda o: o.order_ref)
    if not stops and not targets:
        return None
    if not stops or not targets or stops[-1].order_ref[:-3] != targets[-1].order_ref[:-3]:
        raise SignalsStepError(f"{symbol}: stop-loss {[o.order_ref for o in stops]} and take-profit "
                               f"{[o.order_ref for o in targets]} are not one pair: check the orders")
    s, t = stops[-1], targets[-1]
    return Bracket(s.order_ref, t.order_ref, float(s.remaining), float(s.stop_price or 0.0),
                   float(t.limit_price or 0.0))


def _filled(broker: Broker, gateway: OrderGateway, info: OrderInfo, timeout: float) -> int:
    """Wait until `info` is filled (a rerun's order: from the broker's executions), journal its fills; the shares.

    Raises:
        SignalsStepError: not completely filled in `timeout` s.
    """
    if not info.is_filled:
        try:
            info = broker.wait_for_fill(info.order_id, timeout)
        except (BrokerTimeoutError, OrderNotFilledError, BrokerError) as exc:
            shares = sum(e.shares for e in broker.executions() if e.order_ref == info.order_ref)
            if shares < info.quantity:
                raise SignalsStepError(f"{info.order_ref}: {shares:g} of {info.quantity:g} shares filled ({exc})") \
                    from exc
    fills = gateway.record_fills(info, STRATEGY)
    return int(sum(e.shares for e in fills) or info.filled)


def _cancel_pair(broker: Broker, gateway: OrderGateway, pair: Bracket | None, refs: Refs) -> None:
    """Cancel the working orders of `pair` (the one the decision saw), never this run's own pair (`refs`)."""
    if pair is None:
        return
    working = {o.order_ref: o for o in broker.open_orders()}
    for ref in (pair.stop_ref, pair.target_ref):
        if ref in working and ref not in (refs.stop, refs.target):
            gateway.record_status(broker.cancel_order(working[ref].order_id), message="replaced or closed by signals")


def _place_pair(run: FlowRun, gateway: OrderGateway, symbol: str, direction: int, quantity: int, stop: float,
                target: float, refs: Refs) -> None:
    """The stop-loss (STP) and take-profit (LMT), GTC, in one OCA group, for `quantity` shares of a position of
    `direction` (+1 long: SELL orders; -1 short: BUY orders)."""
    action = "SELL" if direction > 0 else "BUY"
    common = dict(strategy=STRATEGY, session=run.session.date, as_of=run.as_of)
    gateway.submit(OrderRequest(symbol, action, quantity, refs.stop, order_type="STP", stop_price=stop, tif="GTC",
                                oca_group=refs.oca, oca_type=OCA_TYPE), intent="stop", **common)
    gateway.submit(OrderRequest(symbol, action, quantity, refs.target, order_type="LMT", limit_price=target,
                                tif="GTC", oca_group=refs.oca, oca_type=OCA_TYPE), intent="target", **common)


def linked_orders(steps: list[Step] | tuple[Step, ...], refs: Refs, pair: Bracket | None) -> dict[str, Any]:
    """What the decision's journaled inputs say about its orders (the links): the refs of each step, the OCA group
    of the new pair, the refs of the pair it replaces."""
    kinds = {s.kind for s in steps}
    out: dict[str, Any] = {}
    if "close" in kinds:
        out["close"] = refs.close
    if "open" in kinds:
        out["entry"] = refs.entry
    if "scale_in" in kinds:
        out["scale"] = refs.scale
    if kinds & {"open", "scale_in", "resize"}:
        out.update(stop=refs.stop, target=refs.target, oca_group=refs.oca)
    if pair is not None and kinds & {"close", "scale_in", "resize"}:
        out["replaces"] = [pair.stop_ref, pair.target_ref]
    return out


def execute(run: FlowRun, broker: Broker, gateway: OrderGateway, symbol: str, steps: list[dict[str, Any]],
            position: int, pair: Bracket | None, timeout: float) -> list[str]:
    """Carry out a plan's steps (as journaled: dicts of `rules.Step`) in order, from the `position` and `pair` the
    decision saw (as journaled: a rerun follows them, not the state its first run left); returns what was done, one
    line a step. Idempotent by orderRef: a rerun of the same as_of sends nothing twice.

    Raises:
        SignalsStepError, core.orders.OrderBlockedError, core.broker.BrokerError.
    """
    refs = Refs.of(symbol, run.as_of)
    common = dict(strategy=STRATEGY, session=run.session.date, as_of=run.as_of)
    done: list[str] = []
    for raw in steps:
        step = Step(**raw)
        if step.kind == "close":
            gateway.check_sendable(OrderRequest(symbol, step.action, step.quantity, refs.close), strategy=STRATEGY,
                                   intent="close")
            _cancel_pair(broker, gateway, pair, refs)
            pair = None
            info = gateway.submit(OrderRequest(symbol, step.action, step.quantity, refs.close), intent="close",
                                  **common)
            shares = _filled(broker, gateway, info, timeout)
            position += shares if step.action == "BUY" else -shares
            done.append(f"closed: {step.action} {shares} ({refs.close})")
        elif step.kind in ("open", "scale_in"):
            ref = refs.entry if step.kind == "open" else refs.scale
            info = gateway.submit(OrderRequest(symbol, step.action, step.quantity, ref),
                                  intent="entry" if step.kind == "open" else "scale_in", **common)
            try:
                shares = _filled(broker, gateway, info, timeout)
            finally:
                filled_now = sum(e.shares for e in broker.executions() if e.order_ref == ref)
                position_after = position + (filled_now if step.action == "BUY" else -filled_now)
                if filled_now and position_after:
                    # protect what was filled, even when the wait failed
                    direction = 1 if position_after > 0 else -1
                    _cancel_pair(broker, gateway, pair, refs)
                    _place_pair(run, gateway, symbol, direction, int(abs(position_after)), step.stop, step.target,
                                refs)
            position = position_after
            done.append(f"{step.kind}: {step.action} {shares} ({ref}); stop {step.stop:.2f} and target "
                        f"{step.target:.2f} for {abs(position)} in OCA {refs.oca}")
        elif step.kind == "resize":
            _cancel_pair(broker, gateway, pair, refs)
            direction = 1 if position > 0 else -1
            _place_pair(run, gateway, symbol, direction, step.quantity, step.stop, step.target, refs)
            done.append(f"resized the pair to {step.quantity} in OCA {refs.oca}")
        else:
            raise ValueError(f"unknown step {step.kind!r}")
    return done


def mark(quote: Any, symbol: str) -> float:
    """The price (USD) of a `core.broker.Quote`, refused when not finite and positive or delayed (never size from
    it)."""
    price = float(quote.price)
    if not (math.isfinite(price) and price > 0) or quote.delayed:
        raise ValueError(f"{symbol}: price {price!r}{' (delayed)' if quote.delayed else ''} cannot be traded on")
    return price
