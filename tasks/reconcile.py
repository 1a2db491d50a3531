"""Reconciliation's I/O: read the broker, read and write the journal, fetch the closes (decisions: core.reconcile).

`reconcile_account` is the one sequence, used by the `reconciliation` flow (each step a Prefect task, through
`step`) and by `tradeflow reconcile` (plain calls):

1. `read_broker`: positions, open and completed orders, the day's executions with commissions, account values
   and the broker's clock, read until two reads of the executions agree (no fill between them);
2. `record_repairs`: in one journal transaction (the writer lock held, so no flow writes in between), read what
   the journal knows, decide (`core.reconcile.plan_reconciliation`) and record it: external orders, executions,
   order states, new breaks, position snapshots (broker and journal, at `as_of`). The journal is read *after* the
   broker: every order of ours the broker holds was journaled before it was sent, so none is taken for external.
   When the journal holds fills of the day the broker's snapshot lacks while positions disagree (a fill landed
   between the reads), nothing is recorded and the broker is read again (up to 3 times);
3. `session_closes`: the session's and the previous session's daily closes of the symbols held (daily bars);
4. `record_day` (only with `record_day=True`, after the session's close, on the session's own date): the daily
   P&L rows per strategy and for the account, and the end-of-day equity snapshot.

`resolve_break` is `tradeflow resolve`: the same repairs, then the break settled with an adjustment that makes
the journal's quantity the broker's.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from core.broker import Broker
from core.calendar import NY, previous_session, session_on
from core.journal import Journal, JournalTx
from core.reconcile import (
    ACCOUNT,
    BrokerState,
    Fill,
    JournalExecution,
    JournalOrder,
    JournalState,
    Plan,
    Reconciliation,
    account_pnl,
    daily_pnl,
    plan_reconciliation,
    positions_to_mark,
)

log = logging.getLogger("tradeflow.reconcile")

READ_ATTEMPTS = 3
"""Reads of the broker before giving up on a snapshot the journal's fills of the day agree with."""

Step = Callable[[Callable[..., Any]], Callable[..., Any]]
"""Wraps each step: identity by hand, `prefect.task(...)` in the flow."""


def _plain(fn: Callable[..., Any]) -> Callable[..., Any]:
    return fn


# --------------------------------------------------------------------------------------------------------------
# 1. the broker


def read_broker(broker: Broker) -> BrokerState:
    """The broker's state, read so that the positions fit the executions: the executions are read before and
    after everything else, again until the two reads agree (at most READ_ATTEMPTS times; then the last read is
    used and the reconciliation's own retry catches a fill that slipped in).

    Raises:
        core.broker.BrokerError: from the broker (connection, timeout).
    """
    for _ in range(READ_ATTEMPTS):
        before = broker.executions()
        positions = broker.positions()
        open_orders = broker.open_orders()
        completed = broker.completed_orders()
        values = broker.account_values()
        now = broker.current_time()
        after = broker.executions()
        if {e.exec_id for e in before} == {e.exec_id for e in after}:
            break
    return BrokerState(time=now, account=broker.account, positions=tuple(positions), open_orders=tuple(open_orders),
                       completed_orders=tuple(completed), executions=tuple(after), values=values)


def session_closes(broker: Broker, day: dt.date, symbols: set[str], previous: set[str]
                   ) -> tuple[dict[str, float], dict[str, float]]:
    """The daily closes (USD) of `symbols` on `day` and of `previous` on the session before, from the broker's
    daily bars (during the session, the day's bar so far). A symbol without a bar for the date is left out
    (`core.reconcile.daily_pnl` then names it)."""
    before = previous_session(day).date
    closes: dict[str, float] = {}
    prev: dict[str, float] = {}
    for symbol in sorted(symbols | previous):
        bars = broker.historical_bars(symbol, "1 day", "10 D")
        by_date = {ts.date(): float(row.close) for ts, row in bars.iterrows()}
        if symbol in symbols and day in by_date:
            closes[symbol] = by_date[day]
        if symbol in previous and before in by_date:
            prev[symbol] = by_date[before]
    return closes, prev


# --------------------------------------------------------------------------------------------------------------
# 2. the journal


def _day_start(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), NY)


def journal_state(tx: JournalTx, snapshot: BrokerState) -> JournalState:
    """What the journal knows that the plan needs (see `core.reconcile.JournalState`), read inside `tx`."""
    perms = sorted({e.perm_id for e in snapshot.executions if e.perm_id}
                   | {o.perm_id for o in (*snapshot.open_orders, *snapshot.completed_orders) if o.perm_id})
    refs = sorted({e.order_ref for e in snapshot.executions if e.order_ref}
                  | {o.order_ref for o in (*snapshot.open_orders, *snapshot.completed_orders) if o.order_ref})
    orders = tx.orders_to_reconcile(perms, refs)
    executions = tx.executions_to_reconcile(sorted(e.exec_id for e in snapshot.executions),
                                            _day_start(snapshot.day))
    quantities = tx.journal_quantities()
    breaks = tx.breaks_open_or_of(snapshot.day)
    return JournalState(
        orders=tuple(JournalOrder(
            order_ref=r["order_ref"], perm_id=r["perm_id"], order_id=r["order_id"], strategy=r["strategy"],
            symbol=r["symbol"], action=r["action"], quantity=float(r["quantity"]), status=r["status"],
            external=bool(r["external"]), session=r["session"], as_of=r["as_of"], filled=float(r["filled"]))
            for r in orders),
        executions={r["exec_id"]: JournalExecution(
            exec_id=r["exec_id"], symbol=r["symbol"], side=r["side"], shares=float(r["shares"]),
            time=r["exec_time"], commission=r["commission"], order_ref=r["order_ref"]) for r in executions},
        quantities=quantities, breaks=tuple(breaks))


def apply_plan(tx: JournalTx, plan: Plan, *, as_of: dt.datetime, run_id: str | None,
               account: str | None = None) -> dict[str, int]:
    """Record `plan` in `tx` (position snapshots at `as_of`, of `account`); returns how many rows of each kind
    were new (a second run: all zero)."""
    n = dict.fromkeys(("external_orders", "executions", "commissions", "order_ids", "order_states", "breaks",
                       "position_snapshots"), 0)
    for x in plan.external_orders:
        o = x.order
        n["external_orders"] += tx.record_order(
            x.order_ref, strategy="external", symbol=o.symbol, intent="external", action=o.action,
            quantity=o.quantity, order_type=o.order_type or "UNKNOWN", session=x.session, as_of=x.as_of,
            limit_price=o.limit_price, stop_price=o.stop_price, perm_id=o.perm_id or None,
            order_id=o.order_id or None, run_id=run_id, external=True)
    for e in plan.executions:
        new = tx.record_execution(
            e.exec_id, symbol=e.symbol, side=e.side, shares=e.shares, price=e.price, exec_time=e.time,
            order_ref=e.order_ref, perm_id=e.perm_id, order_id=e.order_id, strategy=e.strategy,
            commission=e.commission, realized_pnl=e.realized_pnl, account=e.account, external=e.external)
        n["executions" if e.new else "commissions"] += new
    for s in plan.statuses:
        n["order_ids"] += tx.record_order_ids(s.order_ref, perm_id=s.perm_id, order_id=s.order_id)
        n["order_states"] += tx.record_order_status(
            s.order_ref, s.status, plan.time, filled=s.filled, remaining=s.remaining,
            avg_fill_price=s.avg_fill_price, perm_id=s.perm_id, message=s.message)
    for p in plan.new_breaks:
        n["breaks"] += tx.record_break(p.symbol, plan.day, p.broker_quantity, p.journal_quantity, plan.time,
                                       run_id=run_id)
    n["position_snapshots"] += tx.record_positions(
        as_of, {p.symbol: (p.broker_quantity, p.broker_avg_cost) for p in plan.positions if p.broker_quantity},
        source="broker", account=account, run_id=run_id)
    n["position_snapshots"] += tx.record_positions(
        as_of, {p.symbol: (p.journal_quantity, None) for p in plan.positions}, source="journal", run_id=run_id)
    return n


def read_fills(tx: JournalTx, day: dt.date) -> list[Fill]:
    """Every journaled execution up to the end of `day` (New York), for the P&L."""
    end = _day_start(day + dt.timedelta(days=1))
    return [Fill(strategy=r["strategy"], symbol=r["symbol"], shares=float(r["signed_shares"]), price=float(r["price"]),
                 commission=float(r["commission"] or 0.0), time=r["exec_time"], exec_id=r["exec_id"])
            for r in tx.fills_before(end)]


TRADE_COLUMNS = ("exec_id", "exec_time", "symbol", "side", "shares", "price", "commission", "realized_pnl",
                 "order_ref", "perm_id", "order_id", "strategy", "external", "account")
ORDER_COLUMNS = ("order_ref", "perm_id", "order_id", "strategy", "symbol", "intent", "action", "quantity",
                 "order_type", "limit_price", "stop_price", "status", "filled", "avg_fill_price", "commission",
                 "external", "session", "as_of")
POSITION_COLUMNS = ("symbol", "broker_quantity", "broker_avg_cost", "journal_quantity", "difference", "status")
"""Columns of the exports (`tradeflow reconcile --export NAME`): NAME_executions.csv, NAME_orders.csv,
NAME_positions.csv. Times are ISO 8601 in New York time, money USD, quantities shares."""


def _ny(value: Any) -> Any:
    return value.astimezone(NY) if isinstance(value, dt.datetime) else value


def day_rows(tx: JournalTx, day: dt.date) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The day's executions (TRADE_COLUMNS) and orders (ORDER_COLUMNS: the day's, any with a fill of the day,
    and any not final), as journaled."""
    trades = tx.day_trades(day)
    orders = tx.day_orders(day)
    return ([{k: _ny(r[k]) for k in TRADE_COLUMNS} for r in trades],
            [{k: _ny(r[k]) for k in ORDER_COLUMNS} for r in orders])


def record_repairs(journal: Journal, snapshot: BrokerState, as_of: dt.datetime, run_id: str | None,
                   final: bool = True) -> Reconciliation | None:
    """Plan against the journal and record the plan, in one transaction. Returns None (nothing recorded) when
    the plan asks for a fresh broker snapshot and this is not the `final` attempt."""
    with journal.transaction() as tx:
        plan = plan_reconciliation(snapshot, journal_state(tx, snapshot), as_of=as_of)
        if plan.retry and not final:
            log.warning("reconciliation: %s; reading the broker again", "; ".join(plan.warnings))
            return None
        recorded = apply_plan(tx, plan, as_of=as_of, run_id=run_id, account=snapshot.account)
        trades, orders = day_rows(tx, plan.day)
    return Reconciliation(as_of=as_of, plan=plan, broker=snapshot, recorded=recorded, trades=trades, orders=orders)


def record_day(journal: Journal, result: Reconciliation, run_id: str | None) -> dict[str, int]:
    """Record the day's P&L rows (each strategy and the account) and the end-of-day equity snapshot; returns
    the counts of new rows. Requires `result.pnl`."""
    assert result.pnl is not None
    v = result.broker.values
    account = result.pnl[ACCOUNT]
    n = {"daily_pnl": 0, "end_of_day_equity": 0}
    with journal.transaction() as tx:
        for name, row in result.pnl.items():
            n["daily_pnl"] += tx.record_daily_pnl(
                result.day, name, realized_pnl=row.realized, unrealized_pnl=row.unrealized,
                commissions=row.commissions, net_pnl=row.net, as_of=result.as_of,
                end_equity=v.net_liquidation if (v and row is account) else None, run_id=run_id)
        if v is not None:
            n["end_of_day_equity"] += tx.record_equity_snapshot(
                result.day, "end_of_day", v.net_liquidation, result.as_of, account=v.account,
                available_funds=v.available_funds, buying_power=v.buying_power, cash=v.cash, run_id=run_id)
    return n


def previous_equity(journal: Journal, day: dt.date) -> float | None:
    """NetLiquidation (USD) at the end of the last session before `day` that has one, else `day`'s day-start."""
    with journal.transaction() as tx:
        return tx.previous_equity(day)


def equity_curve(journal: Journal, day: dt.date) -> pd.DataFrame:
    """`v_equity_curve` up to session `day`: columns session, equity (USD), drawdown (a fraction <= 0)."""
    with journal.transaction() as tx:
        return pd.DataFrame(tx.equity_curve(until=day), columns=["session", "equity", "drawdown"])


# --------------------------------------------------------------------------------------------------------------
# the sequence


def reconcile_account(broker: Broker, journal: Journal, as_of: dt.datetime, *, run_id: str | None = None,
                      record_day_pnl: bool = True, step: Step = _plain) -> Reconciliation:
    """Reconcile the account (module docstring). The day's P&L and end-of-day equity are recorded when
    `record_day_pnl` and the broker's clock is past the close of the session of `as_of`'s date; otherwise the P&L
    is computed for the report only (marked at the day's bar so far) and `pnl_note` says why.

    Raises:
        core.broker.BrokerError: reading the broker.
        ValueError: the P&L needs a close the broker did not give, when it is to be recorded (repairs and breaks
            are recorded before).
    """
    result: Reconciliation | None = None
    for attempt in range(READ_ATTEMPTS):
        snapshot = step(read_broker)(broker)
        result = step(record_repairs)(journal, snapshot, as_of, run_id, final=attempt == READ_ATTEMPTS - 1)
        if result is not None:
            break
    assert result is not None
    session = session_on(result.day)
    if session is None:
        result.pnl_note = f"{result.day} is not an NYSE session: no P&L"
        return result
    want = record_day_pnl
    if as_of.astimezone(NY).date() != result.day:
        want, result.pnl_note = False, (f"the broker's day {result.day} is not as_of's "
                                        f"{as_of.astimezone(NY).date()}: nothing recorded for either day's P&L")
    elif result.broker.time < session.close:
        want, result.pnl_note = False, f"before the close ({session.close:%H:%M}): P&L so far, not recorded"
    elif not record_day_pnl:
        result.pnl_note = "computed, not recorded (the evening `reconciliation` run records it)"
    with journal.transaction() as tx:
        fills = read_fills(tx, result.day)
    held_end, held_start = positions_to_mark(fills, result.day)
    try:
        closes, prev = step(session_closes)(broker, result.day, held_end, held_start)
        pnl = daily_pnl(fills, result.day, closes, prev)
    except Exception as exc:  # noqa: BLE001 - recorded repairs stand; the P&L is what failed
        if want:
            raise ValueError(f"daily P&L of {result.day} not recorded: {exc}") from exc
        result.pnl_note = f"P&L not computed: {exc}"
        return result
    pnl[ACCOUNT] = account_pnl(pnl)
    result.pnl = pnl
    result.previous_equity = previous_equity(journal, result.day)
    if result.broker.values is not None:
        result.end_equity = result.broker.values.net_liquidation
    if want:
        result.recorded.update(step(record_day)(journal, result, run_id))
        result.pnl_recorded = True
        result.pnl_note = "recorded in the journal (daily_pnl)"
    return result


@dataclass(frozen=True)
class Resolution:
    """A settled break: how many break rows were resolved and the adjustment recorded (signed shares)."""

    symbol: str
    breaks: int
    broker_quantity: float
    journal_quantity: float
    adjustment: float


def resolve_break(broker: Broker, journal: Journal, symbol: str, who: str, note: str, at: dt.datetime
                  ) -> Resolution | None:
    """`tradeflow resolve`: record today's missing executions and states (the same repairs as a reconciliation),
    then mark the symbol's unresolved breaks settled by `who` with `note`, recording as an adjustment whatever
    difference remains between the broker's quantity and the journal's. Returns None when the symbol has no
    unresolved break (nothing is recorded then).

    Raises:
        ValueError: empty note or who. core.broker.BrokerError: reading the broker.
    """
    if not note.strip() or not who:
        raise ValueError("resolving a break needs who and a note saying how it was settled")
    symbol = symbol.upper()
    for attempt in range(READ_ATTEMPTS):
        snapshot = read_broker(broker)
        with journal.transaction() as tx:
            if not tx.open_breaks(symbol):
                return None
            plan = plan_reconciliation(snapshot, journal_state(tx, snapshot), as_of=at)
            if plan.retry and attempt < READ_ATTEMPTS - 1:
                continue
            apply_plan(tx, plan, as_of=at, run_id=None, account=snapshot.account)
            check = next((p for p in plan.positions if p.symbol == symbol), None)
            broker_q = check.broker_quantity if check else 0.0
            journal_q = check.journal_quantity if check else 0.0
            n = tx.resolve_breaks(symbol, who, note, at, adjustment=broker_q - journal_q, broker_quantity=broker_q)
            return Resolution(symbol=symbol, breaks=n, broker_quantity=broker_q, journal_quantity=journal_q,
                              adjustment=broker_q - journal_q)
    raise AssertionError("unreachable")  # pragma: no cover


def write_exports(result: Reconciliation, name: str | Path) -> list[Path]:
    """Write NAME_positions.csv, NAME_orders.csv and NAME_executions.csv (a trailing `.csv` of NAME is dropped):
    a header and one row per position (broker's or journal's), per order of the day, per execution of the day."""
    base = Path(name)
    if base.suffix.lower() == ".csv":
        base = base.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    positions = [{"symbol": p.symbol, "broker_quantity": p.broker_quantity, "broker_avg_cost": p.broker_avg_cost,
                  "journal_quantity": p.journal_quantity, "difference": p.difference,
                  "status": "ok" if p.agrees else "BREAK"} for p in result.plan.positions]
    paths = []
    for suffix, columns, rows in (("positions", POSITION_COLUMNS, positions),
                                  ("orders", ORDER_COLUMNS, result.orders),
                                  ("executions", TRADE_COLUMNS, result.trades)):
        path = base.with_name(f"{base.name}_{suffix}.csv")
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(columns))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: (v.isoformat() if isinstance(v, (dt.date, dt.datetime)) else v)
                                 for k, v in row.items()})
        paths.append(path)
    return paths
