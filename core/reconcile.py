"""Reconciliation: what the broker says against what the journal says, as pure decisions.

Each session evening (`flows/reconciliation.py`, 17:00) and by hand (`tradeflow reconcile`), the broker's
positions, open and completed orders and the day's executions (IB's `reqExecutions` answers since midnight only)
are compared with the journal. This module decides; `tasks/reconcile.py` reads the broker and the journal and
writes what is decided here, in one journal transaction.

Definitions (USD, shares, New York time):

* **Linking an execution to its order.** An execution belongs to the journal order with its permId; failing
  that, to the journal order with its orderRef whose permId is unknown or the same. The execution then takes
  that order's strategy. An execution linked to no journal order was not sent by this system (placed by hand in
  TWS, or by another client): it is recorded as **external**, with an order `external-<permId>` (strategy
  'external', intent 'external', `external = true`); its own orderRef, if any, is named in the order's status
  message. Orders still working at the broker that no journal order explains are recorded the same way.
* **Repairs.** Executions the journal lacks are inserted; a commission the journal lacks is filled in. Nothing
  recorded is changed otherwise (the journal's writes fill in unknowns only), so a second run changes nothing.
* **Order states.** A journal order that has not reached a final state gets the broker's current state (open or
  completed orders), else 'Filled' when its executions cover its quantity, else, when its session has closed,
  it was decided before that close and the broker knows nothing of it (not working, no final state, no fill),
  'Inactive' with a message saying so (never sent, or expired unseen): a DAY order cannot work after its close
  and a GTC order would be listed as working. A final state is never replaced: when the broker's final state
  differs (a fill that won the race with a cancel), it is added to the order's history and reported.
* **The journal's quantity** of a symbol (`v_journal_positions.quantity`) is the sum of the signed shares of all
  its executions of all time, every strategy and the external ones included, plus the adjustments recorded when
  breaks were resolved (`position_adjustments`). It assumes the journal started with the account flat; a position
  from before (or one changed outside any execution: a transfer, a corporate action, an execution IB no longer
  reports) shows as a break once, and its resolution records the adjustment.
* **A position break** is a symbol whose broker quantity differs from the journal's after the repairs. It is
  recorded once per (symbol, session) while unresolved (`position_breaks`), blocks new orders for the symbol
  (`core.orders`), and ends the evening run Failed (the alert) until `tradeflow resolve SYMBOL --note ...`.
* **Daily P&L** of a strategy (per symbol, average-cost method, commissions apart): realized = the sum over the
  session's fills that reduce a position of (fill price - average cost) x shares reduced (sign for shorts);
  unrealized = open quantity x (the session's close - average cost), at the end of the session; net = realized +
  (unrealized - unrealized at the previous session's close) - the session's commissions. A round trip opened and
  closed within the session thus contributes its gross P&L as realized; one that spans sessions contributes its
  mark-to-market day by day, and the days add up to its P&L. The account's row sums the strategies'. Position
  adjustments carry no price and no P&L.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.broker import AccountValues, Execution, OrderInfo, Position
from core.calendar import NY, session_on
from core.order_status import OrderStatus

EXTERNAL = "external"
"""Strategy (and intent) of orders and executions this system did not send."""
ACCOUNT = "account"
"""The `daily_pnl.strategy` of the whole account's row."""
REPORTED_STRATEGIES = ("ema", "mtf", EXTERNAL)
"""Strategies that always get a daily P&L row (zeros on a quiet day), beside any other that traded."""
QUANTITY_TOLERANCE = 1e-6
"""Shares: broker and journal quantities closer than this agree."""


class PositionBreaksFound(RuntimeError):
    """The broker and the journal disagree on positions (or a break is still unresolved); the message names the
    symbols and how to settle them. Raised after every repair and the P&L have been recorded."""


# --------------------------------------------------------------------------------------------------------------
# inputs


@dataclass(frozen=True)
class BrokerState:
    """What the broker said, read in one go: `time` is the broker's clock (aware) when it was read."""

    time: dt.datetime
    account: str
    positions: tuple[Position, ...]
    open_orders: tuple[OrderInfo, ...]
    completed_orders: tuple[OrderInfo, ...]
    executions: tuple[Execution, ...]
    values: AccountValues | None = None

    @property
    def day(self) -> dt.date:
        """The New York date whose executions `executions` are (IB answers since midnight)."""
        return self.time.astimezone(NY).date()


@dataclass(frozen=True)
class JournalOrder:
    """An order as the journal holds it; `filled` is the shares of its journaled executions."""

    order_ref: str
    perm_id: int | None
    order_id: int | None
    strategy: str
    symbol: str
    action: str
    quantity: float
    status: str
    external: bool
    session: dt.date
    as_of: dt.datetime
    filled: float = 0.0

    @property
    def is_final(self) -> bool:
        return self.status in OrderStatus.DONE


@dataclass(frozen=True)
class JournalExecution:
    """An execution as the journal holds it (side 'BOT'/'SLD'; commission None when unknown)."""

    exec_id: str
    symbol: str
    side: str
    shares: float
    time: dt.datetime
    commission: float | None
    order_ref: str | None = None


@dataclass(frozen=True)
class JournalState:
    """What reconciliation needs from the journal, read inside the transaction that applies the plan.

    Args:
        orders: the orders the broker's items may belong to (by permId or orderRef) and every order not final.
        executions: exec_id -> the journal's execution, for the broker's exec ids and the broker day's executions.
        quantities: symbol -> the journal's quantity (`v_journal_positions`), before this reconciliation.
        breaks: the unresolved breaks and those detected on the broker's day (rows of `position_breaks`).
    """

    orders: tuple[JournalOrder, ...] = ()
    executions: Mapping[str, JournalExecution] = field(default_factory=dict)
    quantities: Mapping[str, float] = field(default_factory=dict)
    breaks: tuple[Mapping, ...] = ()


# --------------------------------------------------------------------------------------------------------------
# the plan


@dataclass(frozen=True)
class ExecutionRecord:
    """An execution to record (`new`), or a known one whose missing commission is filled in. Side 'BOT'/'SLD'."""

    exec_id: str
    symbol: str
    side: str
    shares: float
    price: float
    time: dt.datetime
    order_ref: str
    perm_id: int | None
    order_id: int | None
    strategy: str
    commission: float | None
    realized_pnl: float | None
    account: str | None
    external: bool
    new: bool

    @property
    def signed_shares(self) -> float:
        return self.shares if self.side == "BOT" else -self.shares


@dataclass(frozen=True)
class ExternalOrder:
    """An order this system did not send, to record as `order_ref` with strategy and intent 'external'. `order` is
    the broker's view of it (its own orderRef, ids, type, quantity), or, when the broker no longer lists it, one
    built from its executions (order type 'UNKNOWN')."""

    order_ref: str
    session: dt.date
    as_of: dt.datetime
    order: OrderInfo


@dataclass(frozen=True)
class StatusUpdate:
    """A state of a journal (or new external) order to record (`record_order_status`), with the broker's ids."""

    order_ref: str
    status: str
    filled: float
    remaining: float | None
    avg_fill_price: float | None
    perm_id: int | None
    order_id: int | None
    message: str


@dataclass(frozen=True)
class PositionCheck:
    """One symbol: the broker's quantity (with its average cost, USD a share, IB's, commissions included) and the
    journal's, after this reconciliation's repairs."""

    symbol: str
    broker_quantity: float
    journal_quantity: float
    broker_avg_cost: float | None = None

    @property
    def difference(self) -> float:
        """Broker minus journal, shares."""
        return self.broker_quantity - self.journal_quantity

    @property
    def agrees(self) -> bool:
        return abs(self.difference) <= QUANTITY_TOLERANCE


@dataclass
class Plan:
    """What a reconciliation records (see the module docstring), and what it found.

    `new_breaks` are to be recorded; `open_breaks` are the symbols with a break still unresolved after this run
    (recorded now or before); `unrecordable` are disagreeing symbols whose break of this session was already
    resolved (the table keeps one per symbol and session): they are reported and fail the run, but do not block.
    `retry` is true when the journal holds executions of the day the broker's snapshot lacks while positions
    disagree (a fill landed between the two reads): the caller reads the broker again instead of recording.
    """

    day: dt.date
    time: dt.datetime
    external_orders: list[ExternalOrder] = field(default_factory=list)
    executions: list[ExecutionRecord] = field(default_factory=list)
    statuses: list[StatusUpdate] = field(default_factory=list)
    positions: list[PositionCheck] = field(default_factory=list)
    new_breaks: list[PositionCheck] = field(default_factory=list)
    open_breaks: dict[str, list[Mapping]] = field(default_factory=dict)
    unrecordable: list[PositionCheck] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    retry: bool = False

    @property
    def new_executions(self) -> list[ExecutionRecord]:
        return [e for e in self.executions if e.new]

    @property
    def disagreements(self) -> list[PositionCheck]:
        return [p for p in self.positions if not p.agrees]

    def failure(self) -> str | None:
        """The message the run fails with (breaks found or still open), or None when positions agree and no
        break is open."""
        parts = []
        for p in self.disagreements:
            how = "recorded, its orders are blocked" if p.symbol in self.open_breaks else \
                "NOT recorded: a break of this session was already resolved; check by hand"
            parts.append(f"{p.symbol} broker {p.broker_quantity:g} vs journal {p.journal_quantity:g} shares ({how})")
        for symbol, rows in sorted(self.open_breaks.items()):
            if all(p.symbol != symbol for p in self.disagreements):
                first = min(r["detected_session"] for r in rows)
                parts.append(f"{symbol} positions agree now, but its break of {first} is unresolved (orders blocked)")
        if not parts:
            return None
        return ("position breaks: " + "; ".join(parts)
                + ". Settle each with `tradeflow resolve SYMBOL --note \"how it was settled\"`.")


def external_ref(perm_id: int | None, fallback: str) -> str:
    """The journal's order_ref of an external order: `external-<permId>` (IB gives every order one), or
    `external-<fallback>` when the permId is unknown (0)."""
    return f"external-{perm_id}" if perm_id else f"external-{fallback}"


def _side(action_or_side: str) -> str:
    return {"BUY": "BOT", "SELL": "SLD", "BOT": "BOT", "SLD": "SLD"}[action_or_side]


def _amount(x: float | None) -> float | None:
    """A reported amount, or None when absent, zero or not a finite number (IB's 'unset' is the largest double)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) and x != 0 and abs(x) < 1e300 else None


def plan_reconciliation(broker: BrokerState, journal: JournalState, *, as_of: dt.datetime) -> Plan:
    """Decide what to record (see the module docstring).

    Args:
        broker: the broker's snapshot.
        journal: the journal's state, read after the snapshot (an order our gateway sends is journaled before it
            is sent, so every order of ours the snapshot holds is in the journal).
        as_of: the reconciliation's time (aware): external orders without executions are dated by it.

    Raises:
        ValueError: a naive `as_of` or broker time.
    """
    for name, t in (("as_of", as_of), ("broker time", broker.time)):
        if t.tzinfo is None:
            raise ValueError(f"{name} must be timezone-aware, got {t!r}")
    plan = Plan(day=broker.day, time=broker.time)
    by_perm = {o.perm_id: o for o in journal.orders if o.perm_id}
    by_ref = {o.order_ref: o for o in journal.orders}
    broker_orders: dict[int, OrderInfo] = {}
    for info in (*broker.completed_orders, *broker.open_orders):  # a working order's view wins
        if info.perm_id:
            broker_orders[info.perm_id] = info

    def journal_order(perm_id: int | None, ref: str | None) -> JournalOrder | None:
        if perm_id and perm_id in by_perm:
            return by_perm[perm_id]
        o = by_ref.get(ref) if ref else None
        if o is not None and not o.external and (o.perm_id is None or not perm_id or o.perm_id == perm_id):
            return o
        return None

    externals: dict[str, ExternalOrder] = {}

    def external_order(perm_id: int, fallback: str, info: OrderInfo | None, symbol: str, action: str,
                       quantity: float, broker_ref: str, when: dt.datetime) -> str:
        ref = external_ref(perm_id, fallback)
        if ref not in externals:
            order = info or OrderInfo(
                order_id=0, perm_id=perm_id, order_ref=broker_ref, symbol=symbol, action=action, quantity=quantity,
                order_type="UNKNOWN", limit_price=None, stop_price=None, status="Filled", filled=quantity,
                remaining=0.0, avg_fill_price=0.0, commission=0.0)
            externals[ref] = ExternalOrder(order_ref=ref, session=when.astimezone(NY).date(), as_of=when, order=order)
        return ref

    # executions: link, repair
    shares_by_perm: dict[int, float] = defaultdict(float)
    for e in broker.executions:
        shares_by_perm[e.perm_id] += e.shares
    linked: dict[str, list[ExecutionRecord]] = defaultdict(list)
    for e in sorted(broker.executions, key=lambda x: (x.time, x.exec_id)):
        if broker.account and e.account and e.account != broker.account:
            continue
        side = _side(e.side)
        o = journal_order(e.perm_id, e.order_ref)
        if o is not None:
            ref, strategy, external = o.order_ref, o.strategy, o.external
            if o.symbol != e.symbol or _side(o.action) != side:
                plan.warnings.append(f"execution {e.exec_id} ({side} {e.shares:g} {e.symbol}) is linked to order "
                                     f"{o.order_ref} ({o.action} {o.quantity:g} {o.symbol}) but does not match it")
        else:
            ref = external_order(e.perm_id, e.exec_id, broker_orders.get(e.perm_id), e.symbol,
                                 "BUY" if side == "BOT" else "SELL", shares_by_perm[e.perm_id], e.order_ref, e.time)
            strategy, external = EXTERNAL, True
        known = journal.executions.get(e.exec_id)
        commission = _amount(e.commission)
        record = ExecutionRecord(
            exec_id=e.exec_id, symbol=e.symbol, side=side, shares=float(e.shares), price=float(e.price), time=e.time,
            order_ref=ref, perm_id=e.perm_id or None, order_id=e.order_id or None, strategy=strategy,
            commission=commission, realized_pnl=_amount(e.realized_pnl), account=e.account or None,
            external=external, new=known is None)
        linked[ref].append(record)
        if known is None or (known.commission is None and commission is not None):
            plan.executions.append(record)

    # working orders nobody in the journal sent
    for info in broker.open_orders:
        if journal_order(info.perm_id, info.order_ref) is None:
            external_order(info.perm_id, f"{info.order_id}-{info.symbol}", info, info.symbol, info.action,
                           info.quantity, info.order_ref, as_of)
    plan.external_orders = list(externals.values())

    # order states
    candidates: list[tuple[str, int | None, int | None, str, float, float, JournalOrder | None]] = []
    for o in journal.orders:
        if not o.is_final:
            candidates.append((o.order_ref, o.perm_id, o.order_id, o.status, o.quantity, o.filled, o))
            continue
        info = broker_orders.get(o.perm_id) if o.perm_id else None
        if info is not None and info.is_done and info.status != o.status:  # e.g. a fill won the race with a cancel
            plan.warnings.append(f"order {o.order_ref} ended {info.status} at the broker ({info.filled:g} shares "
                                 f"filled) but the journal's final state is {o.status}: the broker's is added to "
                                 f"its history (order_events), the recorded state is kept")
            plan.statuses.append(StatusUpdate(
                order_ref=o.order_ref, status=info.status, filled=float(info.filled), remaining=float(info.remaining),
                avg_fill_price=float(info.avg_fill_price) or None, perm_id=o.perm_id, order_id=o.order_id,
                message="reconciliation: the broker's final state differs from the journal's"))
    for x in plan.external_orders:
        candidates.append((x.order_ref, x.order.perm_id or None, x.order.order_id or None, "Created",
                           x.order.quantity, 0.0, None))
    open_refs = {i.order_ref: i for i in broker.open_orders if i.order_ref}
    for ref, perm_id, order_id, status, quantity, filled_before, o in candidates:
        info = broker_orders.get(perm_id) if perm_id else None
        if info is None and o is not None:  # ours, never acknowledged: find it by its orderRef
            info = open_refs.get(ref) or next((i for i in broker.completed_orders if i.order_ref == ref), None)
        fills = linked.get(ref, [])
        filled = filled_before + sum(r.shares for r in fills if r.new) if o is not None else \
            sum(r.shares for r in fills)
        avg = (sum(r.shares * r.price for r in fills) / sum(r.shares for r in fills)) if fills else None
        if info is not None:
            filled = max(filled, float(info.filled))
            new_status, message = info.status, "reconciliation: the broker's state"
            avg = float(info.avg_fill_price) if info.avg_fill_price else avg
        elif filled >= quantity - QUANTITY_TOLERANCE:
            new_status, message = "Filled", "reconciliation: its executions cover its quantity"
        elif o is not None and _ended_unseen(o, broker.time):
            new_status = "Inactive"
            message = (f"reconciliation: not working at the broker after the close of {o.session}, no final state "
                       f"and {filled:g} of {quantity:g} shares filled: never sent, or expired unseen")
        else:
            if o is not None:
                plan.warnings.append(f"order {ref} ({status}) is not known to the broker; its state stays {status}")
            continue
        if o is None:
            message += f" (external order, orderRef {info.order_ref!r})" if info is not None and info.order_ref \
                else " (external order)"
        plan.statuses.append(StatusUpdate(
            order_ref=ref, status=new_status, filled=filled, remaining=max(quantity - filled, 0.0),
            avg_fill_price=avg, perm_id=(info.perm_id if info and info.perm_id else perm_id),
            order_id=(info.order_id if info and info.order_id else order_id), message=message))

    # positions
    quantities: dict[str, float] = defaultdict(float, journal.quantities)
    for r in plan.new_executions:
        quantities[r.symbol] += r.signed_shares
    held = {p.symbol: p for p in broker.positions}
    for symbol in sorted(set(held) | {s for s, q in quantities.items() if abs(q) > QUANTITY_TOLERANCE}):
        p = held.get(symbol)
        plan.positions.append(PositionCheck(symbol=symbol, broker_quantity=float(p.quantity) if p else 0.0,
                                            journal_quantity=float(quantities.get(symbol, 0.0)),
                                            broker_avg_cost=float(p.avg_cost) if p else None))
    broker_ids = {e.exec_id for e in broker.executions}
    unseen = [x for x in journal.executions.values()
              if x.exec_id not in broker_ids and x.time.astimezone(NY).date() == plan.day]
    if unseen and plan.disagreements:
        plan.retry = True
        plan.warnings.append("the journal holds executions of the day the broker's snapshot lacks: "
                             + ", ".join(sorted(x.exec_id for x in unseen)))

    # breaks
    open_rows: dict[str, list[Mapping]] = defaultdict(list)
    resolved_today: set[str] = set()
    for row in journal.breaks:
        if row.get("resolved_at") is None:
            open_rows[row["symbol"]].append(row)
        elif row["detected_session"] == plan.day:
            resolved_today.add(row["symbol"])
    for p in plan.disagreements:
        if any(r["detected_session"] == plan.day for r in open_rows.get(p.symbol, [])):
            continue  # recorded by an earlier run of this day, still open
        if p.symbol in resolved_today:
            plan.unrecordable.append(p)
            continue
        plan.new_breaks.append(p)
        open_rows[p.symbol].append({"symbol": p.symbol, "detected_session": plan.day,
                                    "broker_quantity": p.broker_quantity, "journal_quantity": p.journal_quantity,
                                    "resolved_at": None})
    plan.open_breaks = dict(open_rows)
    return plan


def _ended_unseen(order: JournalOrder, now: dt.datetime) -> bool:
    """Whether the order's session closed before `now` and the order was decided before that close (an order
    decided later, e.g. an operator's after the close, may be on its way to the broker)."""
    s = session_on(order.session)
    return s is not None and order.as_of < s.close <= now


# --------------------------------------------------------------------------------------------------------------
# daily P&L


@dataclass(frozen=True)
class Fill:
    """One journaled execution for P&L: `shares` signed (bought > 0), `price` USD a share, `commission` USD."""

    strategy: str
    symbol: str
    shares: float
    price: float
    commission: float
    time: dt.datetime
    exec_id: str = ""


@dataclass(frozen=True)
class Holding:
    """A strategy's open position in a symbol: signed shares, average cost (USD a share, commissions apart) and
    the price it is marked at (USD a share)."""

    quantity: float
    avg_cost: float
    mark: float

    @property
    def unrealized(self) -> float:
        return self.quantity * (self.mark - self.avg_cost)


@dataclass(frozen=True)
class StrategyPnl:
    """One strategy's P&L of a session, USD (see the module docstring). `holdings` are its open positions at the
    end of the session, by symbol."""

    strategy: str
    realized: float = 0.0
    unrealized: float = 0.0
    previous_unrealized: float = 0.0
    commissions: float = 0.0
    fills: int = 0
    holdings: Mapping[str, Holding] = field(default_factory=dict)

    @property
    def net(self) -> float:
        return self.realized + (self.unrealized - self.previous_unrealized) - self.commissions


class _Book:
    """Average-cost position of one strategy in one symbol."""

    def __init__(self) -> None:
        self.quantity = 0.0
        self.avg_cost = 0.0

    def apply(self, shares: float, price: float) -> float:
        """Apply a fill of `shares` (signed) at `price`; returns the realized P&L, USD."""
        q = self.quantity
        if q == 0 or (q > 0) == (shares > 0):  # opening or adding
            total = q + shares
            self.avg_cost = (q * self.avg_cost + shares * price) / total
            self.quantity = total
            return 0.0
        closing = min(abs(shares), abs(q)) * (1 if q > 0 else -1)  # shares of the position closed, signed as q
        realized = closing * (price - self.avg_cost)
        rest = shares + closing  # what is left of the fill after closing (0, or the opening of the other side)
        self.quantity = q - closing
        if abs(self.quantity) <= QUANTITY_TOLERANCE:
            self.quantity, self.avg_cost = 0.0, 0.0
        if abs(rest) > QUANTITY_TOLERANCE:
            self.quantity, self.avg_cost = rest, price
        return realized


def _held(books: Mapping[tuple[str, str], _Book]) -> dict[tuple[str, str], tuple[float, float]]:
    return {k: (b.quantity, b.avg_cost) for k, b in books.items() if abs(b.quantity) > QUANTITY_TOLERANCE}


@dataclass
class _Day:
    """The fills walked up to the end of a day: (strategy, symbol) -> (quantity, average cost) at its start and
    end, and per strategy the day's realized P&L, commissions and fills."""

    start: dict[tuple[str, str], tuple[float, float]]
    end: dict[tuple[str, str], tuple[float, float]]
    realized: dict[str, float]
    commissions: dict[str, float]
    counts: dict[str, int]
    strategies: set[str]


def _walk(fills: Iterable[Fill], day: dt.date) -> _Day:
    books: dict[tuple[str, str], _Book] = defaultdict(_Book)
    start: dict[tuple[str, str], tuple[float, float]] | None = None
    out = _Day({}, {}, defaultdict(float), defaultdict(float), defaultdict(int), set(REPORTED_STRATEGIES))
    for f in sorted(fills, key=lambda x: (x.time, x.exec_id)):
        d = f.time.astimezone(NY).date()
        if d > day:
            break
        out.strategies.add(f.strategy)
        if d == day and start is None:
            start = _held(books)
        realized = books[(f.strategy, f.symbol)].apply(f.shares, f.price)
        if d == day:
            out.realized[f.strategy] += realized
            out.commissions[f.strategy] += f.commission or 0.0
            out.counts[f.strategy] += 1
    out.start = _held(books) if start is None else start
    out.end = _held(books)
    return out


def positions_to_mark(fills: Iterable[Fill], day: dt.date) -> tuple[set[str], set[str]]:
    """Symbols some strategy holds at the end of `day`, and at the end of the session before it: the prices
    `daily_pnl` needs."""
    walked = _walk(fills, day)
    return {s for _, s in walked.end}, {s for _, s in walked.start}


def daily_pnl(fills: Sequence[Fill], day: dt.date, closes: Mapping[str, float],
              previous_closes: Mapping[str, float]) -> dict[str, StrategyPnl]:
    """P&L of each strategy on `day` (see the module docstring): every strategy with a fill on or before `day`
    or listed in REPORTED_STRATEGIES, by name. Fills after `day` are ignored.

    Args:
        fills: every journaled execution (all time), any order.
        day: the session (New York date).
        closes: symbol -> the session's close, USD (needed for every symbol held at its end).
        previous_closes: symbol -> the previous session's close, USD (for every symbol held at its start).

    Raises:
        ValueError: a price needed is missing or not a positive finite number (the message names it).
    """
    walked = _walk(fills, day)

    def mark(prices: Mapping[str, float], symbol: str, what: str) -> float:
        p = prices.get(symbol)
        if p is None or not math.isfinite(p) or p <= 0:
            raise ValueError(f"no usable {what} price for {symbol} (got {p!r}): its open position cannot be marked")
        return float(p)

    previous: dict[str, float] = defaultdict(float)
    for (strategy, symbol), (q, cost) in walked.start.items():
        previous[strategy] += q * (mark(previous_closes, symbol, "previous session's close") - cost)
    holdings: dict[str, dict[str, Holding]] = defaultdict(dict)
    for (strategy, symbol), (q, cost) in walked.end.items():
        holdings[strategy][symbol] = Holding(quantity=q, avg_cost=cost, mark=mark(closes, symbol, f"{day} close"))
    return {
        s: StrategyPnl(strategy=s, realized=walked.realized[s], commissions=walked.commissions[s],
                       fills=walked.counts[s], unrealized=sum(h.unrealized for h in holdings[s].values()),
                       previous_unrealized=previous[s], holdings=dict(holdings[s]))
        for s in sorted(walked.strategies)
    }


def account_pnl(rows: Mapping[str, StrategyPnl]) -> StrategyPnl:
    """The account's row: the sum of the strategies' rows."""
    items = [r for name, r in rows.items() if name != ACCOUNT]
    return StrategyPnl(strategy=ACCOUNT, realized=sum(r.realized for r in items),
                       unrealized=sum(r.unrealized for r in items),
                       previous_unrealized=sum(r.previous_unrealized for r in items),
                       commissions=sum(r.commissions for r in items), fills=sum(r.fills for r in items))


@dataclass
class Reconciliation:
    """What one reconciliation found and recorded.

    `recorded` counts what was new in the journal (executions, commissions, external orders, order states, breaks,
    position snapshots, daily P&L rows, end-of-day equity). `pnl` is None when the day has no session or its
    P&L could not be computed (`pnl_note` says why); `pnl_recorded` tells whether it went into `daily_pnl`.
    `trades` are the day's executions as journaled after the repairs, `orders` the day's orders (and any not
    final), as dicts (the export columns). Equity figures are NetLiquidation, USD.
    """

    as_of: dt.datetime
    plan: Plan
    broker: BrokerState
    recorded: dict[str, int] = field(default_factory=dict)
    pnl: dict[str, StrategyPnl] | None = None
    pnl_note: str = ""
    pnl_recorded: bool = False
    end_equity: float | None = None
    previous_equity: float | None = None
    trades: list[dict[str, Any]] = field(default_factory=list)
    orders: list[dict[str, Any]] = field(default_factory=list)

    @property
    def day(self) -> dt.date:
        return self.plan.day

    @property
    def failure(self) -> str | None:
        return self.plan.failure()

    def summary(self) -> dict[str, Any]:
        """A small dict for the flow's return value and the journal's flow event."""
        return {
            "day": self.day.isoformat(),
            "recorded": dict(self.recorded),
            "breaks": sorted(self.plan.open_breaks),
            "disagreements": [p.symbol for p in self.plan.disagreements],
            "net_pnl": {k: round(v.net, 2) for k, v in (self.pnl or {}).items()},
            "pnl_recorded": self.pnl_recorded,
            "end_equity": self.end_equity,
            "warnings": len(self.plan.warnings),
        }
