"""The signals strategy's I/O steps (broker, journal, signal source), each taking plain values and the run; the
decisions are in `strategies.signals.rules`.

Order refs (`core.orders.order_ref`, one set per ticker and run, so a rerun sends nothing twice):
`signals-<SYM>-<yyyymmddThhmm>-close` (closing the position), `-entry` (a new position: the parent of an IB
bracket), `-sl` / `-tp` (its children, the stop-loss STP and the take-profit LMT, GTC, parentId = the entry's
orderId, in the OCA group `signals-<SYM>-<stamp>-oca`, type 2: a fill of one reduces the other by its shares),
`-scale` (a scale-in: a market order, after whose fill the working children are changed to the position's
shares). Only when an entry fills in part and the rest cannot be waited for (its children, held by IB until the
entry fills completely, are cancelled with the entry's rest) are the filled shares protected by a pair of their
own, `-p-sl` / `-p-tp` in the OCA group `-p-oca`. The decision journaled before the orders lists every ref of the
step with the OCA group, the parent of the children and the refs of the pair it replaces or resizes
(`inputs.orders`); the children's first journaled status names their parent's orderId and permId: the linked
orders are linked there.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any

from core.broker import (Broker, BracketRequest, BrokerError, BrokerTimeoutError, OrderInfo, OrderNotFilledError,
                         OrderRequest)
from core.orders import NOT_SENT, OrderGateway, order_ref
from strategies.signals.rules import Bracket, Step
from tasks.margin import fit_entry
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
    protect_stop: str
    protect_target: str
    protect_oca: str

    @classmethod
    def of(cls, symbol: str, as_of: dt.datetime) -> "Refs":
        r = lambda intent: order_ref(STRATEGY, symbol, as_of, intent)  # noqa: E731
        return cls(r("close"), r("entry"), r("scale"), r("sl"), r("tp"), r("oca"), r("p-sl"), r("p-tp"), r("p-oca"))


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
        if ref in working and ref not in (refs.stop, refs.target, refs.protect_stop, refs.protect_target):
            gateway.record_status(broker.cancel_order(working[ref].order_id), message="replaced or closed by signals")


def _protect(run: FlowRun, gateway: OrderGateway, symbol: str, direction: int, quantity: int, stop: float,
             target: float, refs: Refs) -> None:
    """A pair of its own (STP and LMT, GTC, one OCA group of type 2) for `quantity` shares of a position of
    `direction` (+1 long: SELL orders; -1 short: BUY orders) whose bracket children are gone (an entry filled in
    part). Sent past a halt or a break (`protects_fill`): held shares are never left without their stop."""
    action = "SELL" if direction > 0 else "BUY"
    common = dict(strategy=STRATEGY, session=run.session.date, as_of=run.as_of, protects_fill=True)
    gateway.submit(OrderRequest(symbol, action, quantity, refs.protect_stop, order_type="STP", stop_price=stop,
                                tif="GTC", oca_group=refs.protect_oca, oca_type=OCA_TYPE), intent="stop", **common)
    gateway.submit(OrderRequest(symbol, action, quantity, refs.protect_target, order_type="LMT", limit_price=target,
                                tif="GTC", oca_group=refs.protect_oca, oca_type=OCA_TYPE), intent="target", **common)
    gateway.protection[symbol] = f"{quantity} shares protected by {refs.protect_stop} and {refs.protect_target}"


def bracket_request(symbol: str, action: str, quantity: int, stop: float, target: float, refs: Refs) -> BracketRequest:
    """The bracket of an entry: MKT `action` of `quantity` shares (DAY), its stop-loss STP at `stop` and
    take-profit LMT at `target` (USD) on the other side, GTC, in the OCA group `refs.oca` (type 2)."""
    exit_action = "SELL" if action == "BUY" else "BUY"
    return BracketRequest(
        OrderRequest(symbol, action, quantity, refs.entry),
        OrderRequest(symbol, exit_action, quantity, refs.stop, order_type="STP", stop_price=stop, tif="GTC",
                     oca_group=refs.oca, oca_type=OCA_TYPE),
        OrderRequest(symbol, exit_action, quantity, refs.target, order_type="LMT", limit_price=target, tif="GTC",
                     oca_group=refs.oca, oca_type=OCA_TYPE))


def _open(run: FlowRun, broker: Broker, gateway: OrderGateway, symbol: str, step: Step, refs: Refs,
          timeout: float) -> tuple[int, str]:
    """The bracket of an `open` step: sized by IB's what-if (unless its entry was sent before), placed through
    the one order path, its entry's fill awaited and journaled. Returns (shares filled, what the margin check
    said).

    An entry filled in part when the wait ends: its rest is cancelled (and IB cancels the held children with it),
    the filled shares get a pair of their own (`_protect`), and SignalsStepError says so. An entry not filled at
    all is left working (its children protect it when it fills) and SignalsStepError says so.

    Raises:
        SignalsStepError: the margin allows no share; the entry not (completely) filled in time.
    """
    quantity, said = step.quantity, "sent before: not checked again"
    with run.journal.transaction() as tx:
        journaled = tx.order(refs.entry)
    if journaled is None or journaled["status"] == NOT_SENT:
        fit = fit_entry(broker, symbol, step.quantity, refs.entry, step.action)
        quantity, said = fit.shares, fit.reason
        if quantity < 1:
            raise SignalsStepError(f"{refs.entry}: no position: {fit.reason}")
    placed = gateway.submit_bracket(bracket_request(symbol, step.action, quantity, step.stop, step.target, refs),
                                    strategy=STRATEGY, session=run.session.date, as_of=run.as_of)
    try:
        return _filled(broker, gateway, placed.entry, timeout), said
    except SignalsStepError:
        filled_now = int(sum(e.shares for e in broker.executions() if e.order_ref == refs.entry))
        if not filled_now:  # still working: its children protect it once it fills
            raise
        working = {o.order_ref: o for o in broker.open_orders()}
        if refs.entry in working:  # its children go with it (IB's bracket)
            final = broker.cancel_order(working[refs.entry].order_id)
            gateway.record_status(final, message=f"the rest cancelled after {filled_now} shares filled")
            if final.is_filled:  # the rest filled first: the bracket stands whole
                return _filled(broker, gateway, final, timeout), said
        _protect(run, gateway, symbol, 1 if step.action == "BUY" else -1, filled_now, step.stop, step.target, refs)
        raise


def _resize(run: FlowRun, broker: Broker, gateway: OrderGateway, symbol: str, pair: Bracket | None, position: int,
            stop: float, target: float, refs: Refs, why: str, rerun: bool) -> str:
    """Keep the working stop-loss and take-profit of `pair` covering the `position`'s shares: each child's total
    quantity changed to what it has filled plus the position's shares (IB's modify: the orders keep their refs,
    their parent and their OCA group). When the pair no longer works (or there is none), the position gets a pair
    of its own at `stop` / `target` (`_protect`). Returns one line saying what was done.

    `why` names this run's step: a change journaled with it (`order_changes`) was made by an earlier try of the same
    run, which a `rerun` does not repeat. A rerun changes the pair only while it is as the decision saw it, and
    never places one: the position may have changed since, and the next run resizes from what is then held."""
    shares = abs(position)
    refs_of_pair = (pair.stop_ref, pair.target_ref) if pair else ()
    with run.journal.transaction() as tx:
        before = [c for ref in refs_of_pair for c in tx.order_changes_of(ref) if c["reason"] == why]
    if before:
        return f"{' and '.join(refs_of_pair)} changed before by this run ({why}): nothing sent"
    working = {o.order_ref: o for o in broker.open_orders()}
    legs = [working.get(ref) for ref in refs_of_pair]
    if rerun and not (legs and all(legs) and all(leg.remaining == pair.quantity for leg in legs)):
        return (f"a rerun: the pair {' and '.join(refs_of_pair) or '-'} is not as the decision saw it: left to the "
                "next run")
    if legs and all(legs):
        for leg in legs:
            gateway.modify_quantity(leg, int(leg.filled) + shares, strategy=STRATEGY, why=why)
        gateway.protection[symbol] = f"{shares} shares protected by {pair.stop_ref} and {pair.target_ref}"
        return f"{pair.stop_ref} and {pair.target_ref} changed to cover {shares}"
    _cancel_pair(broker, gateway, pair, refs)
    _protect(run, gateway, symbol, 1 if position > 0 else -1, shares, stop, target, refs)
    return f"the pair no longer works: {refs.protect_stop} and {refs.protect_target} placed for {shares}"


def linked_orders(steps: list[Step] | tuple[Step, ...], refs: Refs, pair: Bracket | None) -> dict[str, Any]:
    """What the decision's journaled inputs say about its orders (the links): the refs of each step; for an
    entry, its bracket children, their `parent` (the entry) and OCA group; the refs of the pair a close or
    reversal `replaces`, or a scale-in or resize `resizes`."""
    kinds = {s.kind for s in steps}
    out: dict[str, Any] = {}
    if "close" in kinds:
        out["close"] = refs.close
    if "open" in kinds:
        out.update(entry=refs.entry, stop=refs.stop, target=refs.target, parent=refs.entry, oca_group=refs.oca)
    if "scale_in" in kinds:
        out["scale"] = refs.scale
    if pair is not None and "close" in kinds:
        out["replaces"] = [pair.stop_ref, pair.target_ref]
    elif pair is not None and kinds & {"scale_in", "resize"}:
        out["resizes"] = [pair.stop_ref, pair.target_ref]
    return out


def execute(run: FlowRun, broker: Broker, gateway: OrderGateway, symbol: str, steps: list[dict[str, Any]],
            position: int, pair: Bracket | None, timeout: float, rerun: bool = False) -> list[str]:
    """Carry out a plan's steps (as journaled: dicts of `rules.Step`) in order, from the `position` and `pair` the
    decision saw (as journaled: a `rerun` follows them, not the state its first run left); returns what was done,
    one line a step. Idempotent by orderRef: a rerun of the same as_of sends nothing twice (and changes a pair only
    as `_resize` says).

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
        elif step.kind == "open":
            shares, margin = _open(run, broker, gateway, symbol, step, refs, timeout)
            position += shares if step.action == "BUY" else -shares
            gateway.protection[symbol] = f"{shares} shares protected by the bracket children {refs.stop}, {refs.target}"
            done.append(f"open: bracket {step.action} {shares} ({refs.entry}; {margin}) with stop-loss {step.stop:.2f} "
                        f"({refs.stop}) and take-profit {step.target:.2f} ({refs.target}) in OCA {refs.oca}")
        elif step.kind == "scale_in":
            info = gateway.submit(OrderRequest(symbol, step.action, step.quantity, refs.scale), intent="scale_in",
                                  **common)
            said = "nothing filled"
            try:
                shares = _filled(broker, gateway, info, timeout)
            finally:  # keep the pair covering what was filled, even when the wait failed
                filled_now = sum(e.shares for e in broker.executions() if e.order_ref == refs.scale)
                after = position + int(filled_now if step.action == "BUY" else -filled_now)
                if filled_now and after:
                    said = _resize(run, broker, gateway, symbol, pair, after, step.stop, step.target, refs,
                                   f"scale-in {refs.scale}", rerun)
            position = after
            done.append(f"scale_in: {step.action} {shares} ({refs.scale}); {said}")
        elif step.kind == "resize":
            said = _resize(run, broker, gateway, symbol, pair, (1 if position > 0 else -1) * step.quantity, step.stop,
                           step.target, refs, f"kept in step with the position by {refs.close.removesuffix('-close')}",
                           rerun)
            done.append(f"resize: {said}")
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
