"""The one path by which an order leaves the system: checks, journal first, then the broker.

`OrderGateway.submit` does, in this order:

0. refuses a non-paper account without the live opt-in (`Broker.guard_live`), before the journal records it;
1. refuses when trading is halted (`core.controls.KillSwitch`), unless the order is an exit an operator asked
   for (`operator=True`: `tradeflow flatten`) or the stop of shares an entry just bought (`protects_fill=True`);
2. in one journal transaction: refuses when the symbol has an unresolved position break (`position_breaks`,
   written by reconciliation) and records the order with its `order_ref` and status `Created` *before* it is
   sent, so that an order whose process dies right after sending is still known by its orderRef;
3. checks the kill switch again, immediately before sending (a halt set while the flow was deciding or writing
   the journal still stops the order);
4. sends it with `Broker.place_order`, which is idempotent by orderRef among the broker's open orders and the
   day's executions, and records the broker's acknowledgement (orderId, permId, status).

`OrderGateway.submit_bracket` passes a bracket (entry, stop-loss and take-profit) through the same steps, every
leg journaled before any is sent; `modify_quantity` keeps a working stop-loss or take-profit in step with its
position.

A rerun with the same `order_ref` sends nothing when the journal already holds the order as sent (any status
after `Created`, including `Cancelled`, which the broker no longer lists) or when the broker finds it.

Once an order is sent, nothing the journal does stops what must follow it (waiting for its fill, placing its
stop): every journal write after sending goes through `write_or_keep`, which keeps the write when the journal
cannot be written (held by another process, a full disk) and writes it, in order, when it can
(`flush_kept`). The gateway remembers what it sent (`sent`, `last_status`) and the flow says what protects each
position (`protection`), so the run's failure (`JournalBehindError`, raised by `tasks.runtime.flow_run`) names in
its first line what was sent and what is held with or without its stop.

Errors: `TradingHaltedError`, `PositionBreakError` (both `OrderBlockedError`: nothing was sent), and the broker's
typed errors (`core.broker`). A rejection is journaled as the order's final status `Inactive` with IB's message;
a timeout leaves it `Created` (unknown: the next run or reconciliation finds out).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.broker import (Broker, BracketInfo, BracketRequest, Execution, OrderInfo, OrderRejectedError, OrderRequest,
                         UnknownContractError)
from core.controls import KillSwitch
from core.journal import UNAVAILABLE, Journal, JournalTx
from core.order_status import OrderStatus

log = logging.getLogger("tradeflow.orders")

log = logging.getLogger(__name__)

NOT_SENT = OrderStatus.CREATED
"""The journal status of an order recorded but not (yet known to be) acknowledged by the broker."""


class OrderBlockedError(RuntimeError):
    """The order was not sent, for a reason of this system (not the broker's); the message says which."""


class TradingHaltedError(OrderBlockedError):
    """Trading is halted (`tradeflow halt`); only operator exits may be sent."""


class PositionBreakError(OrderBlockedError):
    """The symbol has an unresolved position break (`tradeflow resolve SYMBOL --note ...` lifts it)."""


class JournalBehindError(RuntimeError):
    """Orders were sent but the journal could not record all of it (another process holds the file, a full or
    read-only disk). The first line of the message says what was sent and what is held with or without its stop;
    the following lines list the journal writes still missing (kept by the gateway: `flush_kept`)."""


class UnprotectedPositionError(RuntimeError):
    """Shares an entry bought are held without their stop (the stop could not be placed); the message's first
    line says so, with the shares and the entry's orderRef."""


@dataclass(frozen=True)
class KeptWrite:
    """A journal write that could not be made when it was due, kept to be written when the journal is back."""

    what: str
    write: Callable[[JournalTx], Any]


def side_of(action: str) -> str:
    """IB's execution side for an order action: BUY -> 'BOT', SELL -> 'SLD'."""
    return {"BUY": "BOT", "SELL": "SLD"}[action]


@dataclass
class OrderGateway:
    """Sends orders for one flow run.

    Args:
        broker: a connected Broker.
        journal: the journal orders and fills are recorded in.
        kill_switch: the halt file of the state directory.
        run_id: the Prefect flow run id recorded with each order (None outside a run).
        now: the clock used for the *recording* times of statuses and controls (not for decisions); default
            the broker's clock, so that a replay records exchange times.
    """

    broker: Broker
    journal: Journal
    kill_switch: KillSwitch
    run_id: str | None = None
    now: Callable[[], dt.datetime] | None = None
    kept: list[KeptWrite] = field(default_factory=list)
    """Journal writes due after an order was sent that the journal could not take yet (oldest first)."""
    journal_problem: str | None = None
    """The error of the first write that could not be made."""
    sent: dict[str, str] = field(default_factory=dict)
    """What this gateway sent, by orderRef: 'BUY 100 SMH (ema entry, ref ...)'."""
    last_status: dict[str, str] = field(default_factory=dict)
    """The broker's last word on each order sent, by orderRef: 'Filled 100 at 245.10 USD'."""
    protection: dict[str, str] = field(default_factory=dict)
    """By symbol: what protects what is held, said by the flow (e.g. the stop armed after an entry's fill)."""

    def write_or_keep(self, what: str, write: Callable[[JournalTx], Any]) -> bool:
        """Write `write(tx)` in one journal transaction now, or keep it when the journal cannot be written
        (`core.journal.UNAVAILABLE`) so that what follows an order already sent (its fill, its stop) still
        happens. Once one write is kept, later ones are kept behind it (their order matters: a status after its
        order) without trying the journal again until `flush_kept`. Returns True when written now."""
        if not self.kept:
            try:
                with self.journal.transaction() as tx:
                    write(tx)
                return True
            except UNAVAILABLE as exc:
                self.journal_problem = f"{type(exc).__name__}: {exc}"
                log.critical("the journal cannot be written (%s): %s is kept and written when it is back; the "
                             "order path goes on", self.journal_problem, what)
        self.kept.append(KeptWrite(what, write))
        return False

    def flush_kept(self) -> bool:
        """Write every kept write, in order, in one transaction. True when none is left; False when the journal
        still cannot be written (they stay kept)."""
        if not self.kept:
            return True
        try:
            with self.journal.transaction() as tx:
                for k in self.kept:
                    k.write(tx)
        except UNAVAILABLE as exc:
            self.journal_problem = f"{type(exc).__name__}: {exc}"
            return False
        log.warning("the journal is back: %d kept write(s) recorded", len(self.kept))
        self.kept.clear()
        return True

    def behind_message(self, failure: BaseException | None = None) -> str:
        """The JournalBehindError message: first line what was sent and how each symbol is protected, then the
        run's own failure (if any), the journal's error and the kept writes."""
        sent = "; ".join(f"{what}: {self.last_status.get(ref, 'sent')}" for ref, what in self.sent.items())
        held = "; ".join(f"{sym}: {p}" for sym, p in sorted(self.protection.items()))
        first = (f"ORDERS SENT, JOURNAL BEHIND: sent {sent}" if sent else "JOURNAL BEHIND: no order was sent") \
            + (f". {held}" if held else "")
        lines = [first]
        if failure is not None:
            lines.append(f"then the run failed: {type(failure).__name__}: {failure}")
        lines.append(f"the journal could not be written ({self.journal_problem}); {len(self.kept)} write(s) it "
                     "lacks, kept by this run only: a rerun with the same as_of, or the evening reconciliation, "
                     "records them from the broker:")
        lines += [f"  - {k.what}" for k in self.kept]
        return "\n".join(lines)

    def _now(self) -> dt.datetime:
        return self.now() if self.now else self.broker.current_time()

    def check_halt(self, what: str) -> None:
        """Raise TradingHaltedError naming `what` when trading is halted."""
        halt = self.kill_switch.current()
        if halt is not None:
            log.warning("%s not sent: trading is halted (%s)", what, halt.describe())
            raise TradingHaltedError(f"{what} not sent: {halt.describe()} (`tradeflow resume` lifts it)")

    def submit(self, request: OrderRequest, *, strategy: str, intent: str, session: dt.date, as_of: dt.datetime,
               operator: bool = False, protects_fill: bool = False) -> OrderInfo:
        """Send `request` once (see the module docstring); returns the broker's view of the order, with
        `existing=True` when it had been sent before and nothing was sent now.

        Args:
            request: the order; its `order_ref` must be unique to (strategy, symbol, run or session, intent).
            strategy: 'ema', 'mtf' or 'manual' (journal `orders.strategy`).
            intent: 'entry', 'exit', 'stop', 'flatten', ... (journal `orders.intent`).
            session: the NYSE session the order belongs to (New York date).
            as_of: the decision time (aware).
            operator: True only for exits an operator asked for (flatten): they pass a halt and a break.
            protects_fill: True only for the stop of shares this run's entry just bought: it passes a halt and a
                break (a filled entry is never left without its stop), and when the journal cannot record it
                first, it is sent anyway and the record kept (`write_or_keep`).

        After the broker's answer the journal writes (acknowledgement, rejection) never raise for an unavailable
        journal: they are kept (`write_or_keep`) and the caller goes on to its protective step.

        Raises:
            TradingHaltedError, PositionBreakError: nothing was sent.
            core.broker.BrokerError subclasses: from the broker (see `Broker.place_order`).
        """
        what = _describe(request, strategy, intent)
        self.broker.guard_live(what)
        checked = not (operator or protects_fill)
        if checked:
            self.check_halt(what)
        prior: list[tuple] = []

        def created(tx: JournalTx) -> None:
            if checked:
                _check_breaks(tx, request.symbol, what)
            prior[:] = self._record_created(tx, request, strategy, intent, session, as_of)

        if protects_fill:  # the broker's idempotency by orderRef stands in for the journal's when it is away
            self.write_or_keep(f"the order {what} (Created)", created)
        else:
            with self.journal.transaction() as tx:
                created(tx)
        if prior and prior[0][0] != NOT_SENT:
            status, order_id, perm_id = prior[0]
            log.info("%s was sent before (%s, permId %s): nothing sent again", what, status, perm_id)
            return self._journaled(request, status, order_id, perm_id)
        if checked:
            self.check_halt(what)
        log.info("sending %s", _order_words(request, strategy, intent))
        try:
            info = self.broker.place_order(request)
        except (OrderRejectedError, UnknownContractError) as exc:
            self._record_refusal(what, [request.order_ref], exc)
            raise
        self.sent[request.order_ref] = what
        log.info("order %s %s: %s (order id %s, permId %s)", request.order_ref,
                 "found at the broker" if info.existing else "acknowledged", info.status, info.order_id,
                 info.perm_id or "-")
        self.record_status(info)
        return info

    def _record_refusal(self, what: str, refs: list[str], exc: Exception) -> None:
        """Journal the broker's refusal of the orders `refs` (final status Inactive with IB's message; kept when the
        journal cannot take it: `write_or_keep`)."""
        log.error("%s rejected by the broker: %s", what, exc)
        when, why = self._now(), str(exc)

        def write(tx: JournalTx) -> None:
            for ref in refs:
                tx.record_order_status(ref, "Inactive", when, message=why)

        self.write_or_keep(f"the rejection of {what}", write)

    def _record_created(self, tx: JournalTx, request: OrderRequest, strategy: str, intent: str, session: dt.date,
                        as_of: dt.datetime) -> list[tuple]:
        """Journal `request` as Created (a recorded order stays as recorded); returns [(status, order_id,
        perm_id)] of the order the journal held before, or []."""
        order = tx.order(request.order_ref)
        tx.record_order(request.order_ref, strategy=strategy, symbol=request.symbol, intent=intent,
                        action=request.action, quantity=request.quantity, order_type=request.order_type,
                        session=session, as_of=as_of, limit_price=request.limit_price,
                        stop_price=request.stop_price, run_id=self.run_id)
        return [] if order is None else [(order["status"], order["order_id"], order["perm_id"])]

    def submit_bracket(self, bracket: BracketRequest, *, strategy: str, session: dt.date, as_of: dt.datetime,
                       intents: tuple[str, str, str] = ("entry", "stop", "target")) -> BracketInfo:
        """Send a bracket (`core.broker.BracketRequest`: the entry and its stop-loss and take-profit children)
        once, through the gates of `submit` for every leg: the live guard; the halt, checked before the journal
        records anything and again right before sending; the symbol's position breaks; each leg journaled
        `Created` (with its `intents`, one transaction) before anything is sent; then `Broker.place_bracket`
        (IB's parentId/transmit pattern). Each leg's acknowledgement is journaled, and the children's link to their
        parent (`order_links`: the entry's orderRef, orderId and permId, the OCA group). Returns the broker's view of
        the legs (`existing=True` on a leg sent before).

        A rerun sends nothing the journal holds as sent: when every leg is, the broker is not asked; otherwise
        `place_bracket` finds each leg by its orderRef and sends only the missing ones. The what-if margin check
        of the entry is the caller's, before it sizes the bracket (as for every entry: `tasks.margin.fit_entry`).

        Raises:
            TradingHaltedError, PositionBreakError: nothing was sent (nor journaled for a halt).
            core.broker.BrokerError subclasses: from the broker (a refused leg is journaled `Inactive`).
        """
        entry = bracket.entry
        what = f"the bracket {_describe(entry, strategy, intents[0])}"
        self.broker.guard_live(what)
        self.check_halt(what)
        priors: list[list[tuple]] = []

        def created(tx: JournalTx) -> None:
            _check_breaks(tx, entry.symbol, what)
            priors[:] = [self._record_created(tx, leg, strategy, intent, session, as_of)
                         for leg, intent in zip(bracket.legs, intents, strict=True)]

        with self.journal.transaction() as tx:
            created(tx)
        if all(p and p[0][0] != NOT_SENT for p in priors):
            log.info("%s was sent before (every leg journaled as sent): nothing sent again", what)
            legs = [self._journaled(leg, *p[0]) for leg, p in zip(bracket.legs, priors, strict=True)]
            return BracketInfo(*legs, parent_id=legs[0].order_id)
        self.check_halt(what)
        for leg, intent in zip(bracket.legs, intents, strict=True):
            log.info("sending %s", _order_words(leg, strategy, intent))
        try:
            info = self.broker.place_bracket(bracket)
        except (OrderRejectedError, UnknownContractError) as exc:
            self._record_refusal(what, [leg.order_ref for leg, p in zip(bracket.legs, priors, strict=True)
                                        if not p or p[0][0] == NOT_SENT], exc)
            raise
        for leg, intent, got in zip(bracket.legs, intents, info.legs, strict=True):
            self.sent[leg.order_ref] = _describe(leg, strategy, intent)
            log.info("order %s %s: %s (order id %s, permId %s)", leg.order_ref,
                     "found at the broker" if got.existing else "acknowledged", got.status, got.order_id,
                     got.perm_id or "-")
            self.record_status(got)

        def links(tx: JournalTx) -> None:
            for child in (bracket.stop_loss, bracket.take_profit):
                tx.record_order_link(child.order_ref, parent_ref=entry.order_ref, parent_order_id=info.parent_id,
                                     parent_perm_id=info.entry.perm_id, oca_group=child.oca_group)

        self.write_or_keep(f"the links of {bracket.stop_loss.order_ref} and {bracket.take_profit.order_ref} to "
                           f"their parent {entry.order_ref} (order {info.parent_id})", links)
        return info

    def modify_quantity(self, info: OrderInfo, quantity: int, *, strategy: str, why: str) -> OrderInfo:
        """Change the total quantity of the working order `info` (a bracket child kept in step with its position)
        to `quantity` shares, and journal the change (`order_changes`, with `why`). Passes a halt and a
        break: it only ever keeps a position's stop-loss and take-profit covering what is held. Nothing is sent
        for an order already of that quantity or ended. Raises the broker's errors (`Broker.modify_quantity`)."""
        what = f"{info.order_ref} ({strategy}) to {quantity} shares"
        self.broker.guard_live(what)
        if info.is_done or float(info.quantity) == float(quantity):
            return info
        got = self.broker.modify_quantity(info.order_id, quantity)
        when = self._now()
        self.write_or_keep(f"the change of {info.order_ref} from {info.quantity:g} to {got.quantity:g} shares",
                           lambda tx: tx.record_order_change(info.order_ref, quantity_before=info.quantity,
                                                             quantity_after=got.quantity, event_time=when,
                                                             reason=why))
        self.record_status(got)
        return got

    def check_sendable(self, request: OrderRequest, *, strategy: str, intent: str) -> None:
        """Raise what `submit` would raise before sending (LiveTradingRefusedError, TradingHaltedError,
        PositionBreakError), sending and
        journaling nothing: for a caller that must not take a step unless the order can follow it (cancelling
        the stop that an exit or a new stop replaces)."""
        what = _describe(request, strategy, intent)
        self.broker.guard_live(what)
        self.check_halt(what)
        with self.journal.transaction() as tx:
            _check_breaks(tx, request.symbol, what)

    def _journaled(self, request: OrderRequest, status: str, order_id: int | None, perm_id: int | None) -> OrderInfo:
        """The order as the journal knows it, for a rerun that sends nothing."""
        rows = self.journal_fills(request.order_ref)
        filled = sum(r[0] for r in rows)
        avg = sum(r[0] * r[1] for r in rows) / filled if filled else 0.0
        return OrderInfo(order_id=int(order_id or 0), perm_id=int(perm_id or 0), order_ref=request.order_ref,
                         symbol=request.symbol, action=request.action, quantity=float(request.quantity),
                         order_type=request.order_type, limit_price=request.limit_price,
                         stop_price=request.stop_price, status=status, filled=filled,
                         remaining=max(0.0, float(request.quantity) - filled), avg_fill_price=avg,
                         commission=sum(r[2] or 0.0 for r in rows), existing=True)

    def journal_fills(self, order_ref: str) -> list[tuple[float, float, float | None]]:
        """(shares, price, commission) of the fills the journal holds for `order_ref`."""
        with self.journal.transaction() as tx:
            return tx.fills_of(order_ref)

    def record_status(self, info: OrderInfo, message: str | None = None, only_if_journaled: bool = False) -> None:
        """Journal the broker's view of an order: its ids and its current status (kept when the journal cannot
        be written: `write_or_keep`). With `only_if_journaled`, nothing for an order the journal does not hold
        (one placed outside this system)."""
        when = self._now()
        if info.order_ref in self.sent:
            fill = f" {info.filled:g} at {info.avg_fill_price:.2f} USD" if info.filled else ""
            self.last_status[info.order_ref] = f"{info.status}{fill}"

        def write(tx: JournalTx) -> None:
            if only_if_journaled and not tx.has_order(info.order_ref):
                return
            tx.record_order_ids(info.order_ref, perm_id=info.perm_id or None, order_id=info.order_id or None)
            tx.record_order_status(info.order_ref, info.status, when, filled=info.filled,
                                   remaining=info.remaining, avg_fill_price=info.avg_fill_price or None,
                                   perm_id=info.perm_id or None, message=message)

        self.write_or_keep(f"status {info.status} of {info.order_ref} (order {info.order_id}, filled "
                           f"{info.filled:g})", write)

    def record_fills(self, info: OrderInfo, strategy: str) -> list[Execution]:
        """Journal the broker's executions of the order `info` (matched by permId, else orderRef) with their
        commissions, and the order's status. Returns the executions found. Idempotent."""
        fills = [e for e in self.broker.executions()
                 if (info.perm_id and e.perm_id == info.perm_id) or e.order_ref == info.order_ref]
        self.record_executions(fills, strategy, order_ref=info.order_ref)
        self.record_status(info)
        return fills

    def record_executions(self, fills: list[Execution], strategy: str, order_ref: str | None = None) -> int:
        """Journal executions (the broker's side BUY/SELL becomes the journal's BOT/SLD), under `order_ref` when
        an execution carries none. Returns how many were new or completed (commission); 0 when the journal could
        not be written now (the write is kept: `write_or_keep`). Idempotent."""
        count = 0

        def write(tx: JournalTx) -> None:
            nonlocal count
            for e in fills:
                new = tx.record_execution(
                    e.exec_id, symbol=e.symbol, side=side_of(e.side) if e.side in ("BUY", "SELL") else e.side,
                    shares=e.shares, price=e.price, exec_time=e.time, order_ref=e.order_ref or order_ref,
                    perm_id=e.perm_id or None, order_id=e.order_id or None, strategy=strategy,
                    commission=e.commission if e.commission else None,
                    realized_pnl=e.realized_pnl if e.realized_pnl else None, account=e.account)
                count += new
                if new:
                    log.info("fill %s: %s %g %s at %.4f USD, orderRef %s, commission %s", e.exec_id, e.side,
                             e.shares, e.symbol, e.price, e.order_ref or order_ref or "-",
                             f"{e.commission:.2f} USD" if e.commission else "not yet reported")

        if fills:
            self.write_or_keep(f"{len(fills)} execution(s) of {order_ref or fills[0].order_ref} "
                               f"({sum(e.shares for e in fills):g} shares)", write)
        return count


def _describe(request: OrderRequest, strategy: str, intent: str) -> str:
    return f"{request.action} {request.quantity} {request.symbol} ({strategy} {intent}, ref {request.order_ref})"


def _order_words(request: OrderRequest, strategy: str, intent: str) -> str:
    """An order as a trader reads it: 'BUY 120 SMH MKT DAY (ema entry), orderRef ema-SMH-20260306-entry'."""
    price = (f" limit {request.limit_price:.2f}" if request.order_type == "LMT" else
             f" stop {request.stop_price:.2f}" if request.order_type == "STP" else "")
    return (f"{request.action} {request.quantity} {request.symbol} {request.order_type}{price} {request.tif} "
            f"({strategy} {intent}), orderRef {request.order_ref}")


def _check_breaks(tx, symbol: str, what: str) -> None:
    breaks = tx.open_breaks(symbol)
    if breaks:
        b = breaks[0]
        log.warning("%s not sent: %s has an unresolved position break", what, symbol)
        raise PositionBreakError(
            f"{what} not sent: {symbol} has an unresolved position break since {b['detected_session']} (broker "
            f"{b['broker_quantity']:g} shares, journal {b['journal_quantity']:g}); settle it with "
            f"`tradeflow resolve {symbol} --note ...`")


def order_ref(strategy: str, symbol: str, when: dt.date | dt.datetime, intent: str) -> str:
    """The orderRef of an order: unique to strategy, symbol, session (a date) or run (a datetime, to the minute,
    New York time) and intent, e.g. `ema-SMH-20260302-entry`, `mtf-AAPL-20260302T1005-exit`. The same decision
    always gets the same ref, which is what makes a rerun send nothing new.

    Raises:
        ValueError: a naive datetime.
    """
    if isinstance(when, dt.datetime):
        if when.tzinfo is None:
            raise ValueError("order_ref: the run time must be timezone-aware")
        from core.calendar import NY

        stamp = when.astimezone(NY).strftime("%Y%m%dT%H%M")
    else:
        stamp = when.strftime("%Y%m%d")
    return f"{strategy}-{symbol}-{stamp}-{intent}"
