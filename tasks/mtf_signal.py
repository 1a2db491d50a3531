"""The I/O steps of the `mtf-signal` flow (flows/mtf_signal.py): models, bars, fills, the journal, orders.

The decisions themselves are :func:`core.strategies.mtf.decide` (pure); these tasks gather what it needs and carry
out what it returns. No TensorFlow: P(up) comes from the champion's numpy forward pass (models.inference).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from prefect import task
from prefect.cache_policies import NONE

from core.bar_store import BarStore, StoreUpdate, bars_problem, complete_bars, store_root
from core.bars import BarsError
from core.broker import (Broker, BrokerConnectionError, BrokerError, BrokerTimeoutError, Execution, OrderInfo,
                         OrderNotFilledError, OrderRequest)
from core.calendar import Session, sessions
from core.features import FEATURES, MIN_HISTORY_WEEKS, FeatureInputError, compute_features
from core.order_status import OrderStatus
from core.orders import OrderBlockedError, OrderGateway, order_ref
from core.strategies.mtf import Fill, MtfDecision, open_position
from models.gate import GateRule, GateStatus, gate_status
from models.registry import ModelRegistry, RegistryError
from tasks.runtime import FlowRun

log = logging.getLogger(__name__)

STRATEGY = "mtf"
HISTORY = dt.timedelta(weeks=MIN_HISTORY_WEEKS + 2)
"""How far back the bar store must reach for a signal: the features' MIN_HISTORY_WEEKS plus two spare weeks, so
that all L rows the model reads are past the warm-up."""


class ModelUnavailableError(RuntimeError):
    """A symbol has no champion, or its model files cannot be read or do not fit the features: the run trades
    nothing."""


@dataclass
class Champion:
    """A symbol's champion: registry version name, journal name and the numpy predictor."""

    symbol: str
    version: str
    journal_id: str
    predictor: Any


@task(cache_policy=NONE)
def load_champions(run: FlowRun, symbols: list[str]) -> dict[str, Champion]:
    """The champion of every symbol, loaded and checked, before anything is traded.

    Raises:
        ModelUnavailableError: naming every symbol without a usable model and what to do about it.
    """
    registry = ModelRegistry(run.settings.models_dir, run.journal)
    out: dict[str, Champion] = {}
    problems = []
    for sym in symbols:
        try:
            mv = registry.champion(sym)
            if mv is None:
                raise RegistryError(f"{sym} has no champion model in the registry")
            try:
                predictor = registry.load_predictor(sym, mv.version)
            except (OSError, ValueError, KeyError) as exc:  # missing, truncated or foreign weights file
                raise RegistryError(f"{sym} {mv.version}: {mv.weights_path} unreadable: {exc}") from None
            if predictor.features != list(FEATURES):
                raise RegistryError(f"{sym} {mv.version} was trained on other features than core.features.FEATURES")
            out[sym] = Champion(sym, mv.version, f"{sym}/{mv.version}", predictor)
        except RegistryError as exc:
            problems.append(f"{exc} (train one: `tradeflow train --symbols {sym}`, or make a version champion: "
                            f"`tradeflow models promote {sym} VERSION`)")
    if problems:
        raise ModelUnavailableError("mtf-signal trades nothing: no usable model: " + "; ".join(problems))
    return out


@task(cache_policy=NONE)
def edge_gates(run: FlowRun, champions: dict[str, Champion]) -> dict[str, GateStatus]:
    """Each champion's edge gate (`models.gate.gate_status`: its walk-forward evidence in the journal, or an
    operator's allowance): a closed gate lets the run decide and journal, but send no entry."""
    rule = GateRule.from_settings(run.settings)
    with run.journal.transaction() as tx:
        return {sym: gate_status(tx, sym, c.journal_id, rule) for sym, c in champions.items()}


# --------------------------------------------------------------------------------------------------------------
# what the journal and the broker say before deciding


@dataclass
class BookState:
    """The strategy's state at the start of a run (journal after syncing fills, and the broker)."""

    fills: dict[str, list[Fill]]  # symbol -> the strategy's fills
    broker_positions: dict[str, float]  # symbol -> shares at the broker
    working: dict[str, list[str]]  # symbol -> orderRefs of the strategy's orders still working at the broker
    breaks: dict[str, str]  # symbol -> open position break, described
    earlier: dict[str, dict]  # symbol -> the decision already journaled for this as_of (a rerun)
    limit_hit_earlier: bool  # a run earlier in the session found the daily loss limit reached
    synced: int = 0  # executions recorded by the sync

    def position(self, symbol: str) -> tuple[int, dt.datetime | None]:
        return open_position(self.fills.get(symbol, []))

    def all_fills(self) -> list[Fill]:
        return [f for fs in self.fills.values() for f in fs]


@task(cache_policy=NONE)
def read_book(run: FlowRun, broker: Broker, gateway: OrderGateway) -> BookState:
    """Record the strategy's executions the journal lacks (an order that filled after its run stopped waiting)
    and the final status of its orders, then read fills, positions, working orders, breaks, the decisions
    already taken at this `as_of` and the session's loss-limit latch."""
    execs = [e for e in broker.executions() if (e.order_ref or "").startswith(f"{STRATEGY}-")]
    open_orders = [o for o in broker.open_orders() if (o.order_ref or "").startswith(f"{STRATEGY}-")]
    synced = _sync(run, gateway, execs, open_orders)
    positions: dict[str, float] = {}
    for p in broker.positions():
        positions[p.symbol] = positions.get(p.symbol, 0.0) + p.quantity
    working: dict[str, list[str]] = {}
    for o in open_orders:
        working.setdefault(o.symbol, []).append(o.order_ref)
    session = run.session
    with run.journal.transaction() as tx:
        rows = tx.strategy_fills(STRATEGY)
        breaks = {b["symbol"]: f"unresolved position break since {b['detected_session']} (broker "
                               f"{b['broker_quantity']:g} shares, journal {b['journal_quantity']:g}); "
                               f"`tradeflow resolve {b['symbol']} --note ...` lifts it"
                  for b in tx.open_breaks()}
        earlier_rows = tx.signals_at(STRATEGY, run.as_of)
        latch = tx.loss_limit_reached_before(STRATEGY, session.date, run.as_of)
    fills: dict[str, list[Fill]] = {}
    for sym, shares, price, commission, when in rows:
        if when <= run.as_of:  # a replay of an earlier as_of ignores later fills
            fills.setdefault(sym, []).append(Fill(sym, shares, price, commission, when))
    earlier = {r["symbol"]: {"decision": r["decision"], "quantity": r["quantity"], "order_ref": r["order_ref"],
                             "reason": r["reason"], "p_up": r["probability"]} for r in earlier_rows}
    return BookState(fills=fills, broker_positions=positions, working=working, breaks=breaks, earlier=earlier,
                     limit_hit_earlier=latch, synced=synced)


def _sync(run: FlowRun, gateway: OrderGateway, execs: list[Execution], open_orders: list[OrderInfo]) -> int:
    """Journal the strategy's executions the journal lacks, and the statuses of its unfinished orders."""
    ids = [e.exec_id for e in execs]
    with run.journal.transaction() as tx:
        known = tx.known_exec_ids(ids)
        unfinished = tx.unfinished_orders(STRATEGY)
    new = [e for e in execs if e.exec_id not in known]
    if new:
        gateway.record_executions(new, STRATEGY)
    working = {o.order_ref: o for o in open_orders}
    for ref, quantity in unfinished:
        if ref in working:
            gateway.record_status(working[ref])
            continue
        done = [e for e in execs if e.order_ref == ref]
        filled = sum(e.shares for e in done)
        if done and filled >= quantity:
            avg = sum(e.shares * e.price for e in done) / filled
            with run.journal.transaction() as tx:
                tx.record_order_status(ref, OrderStatus.FILLED, max(e.time for e in done), filled=filled,
                                       remaining=0.0, avg_fill_price=avg, perm_id=done[0].perm_id or None)
    return len(new)


# --------------------------------------------------------------------------------------------------------------
# what the market says about one symbol


@dataclass
class SymbolView:
    """What one run observed for one symbol (every field goes into the journal's `inputs`)."""

    symbol: str
    p_up: float | None = None
    problem: str | None = None  # why there is no P(up)
    last_bar: str | None = None  # start of the last complete bar used (ISO)
    bars: int = 0
    previous_close: float | None = None  # USD, the previous session's last close
    price: float | None = None  # USD, a live quote usable for sizing
    price_problem: str | None = None
    mark: float | None = None  # USD, the quote used to value a position (live or delayed)
    quote_delayed: bool | None = None
    store: dict[str, Any] = field(default_factory=dict)
    failure: str | None = None  # needs a person: the broker failed, the store is damaged (the run ends failed)


@task(cache_policy=NONE)
def observe_symbol(run: FlowRun, broker: Broker, champion: Champion, cutoff: dt.datetime) -> SymbolView:
    """Bring the symbol's bar store up to date, compute the features on the complete bars, P(up) of the last one
    with the champion, and the current quote. A problem with the data gives a view without P(up) (and says
    why); a lost connection raises.

    Raises:
        BrokerConnectionError, BrokerTimeoutError: the broker is unreachable.
    """
    sym = champion.symbol
    view = SymbolView(sym)
    store = BarStore(store_root(run.settings.state_dir))
    bars = None
    try:
        upd: StoreUpdate = store.update(broker, sym, cutoff, run.as_of - HISTORY)
        view.store = {"requests": upd.requests, "added": upd.added, "note": upd.note}
        log.info("%s hourly bars: %d new from %d broker request(s)%s", sym, upd.added, upd.requests,
                 f" ({upd.note})" if upd.note else "")
        bars = complete_bars(store.load(sym), cutoff)
    except BarsError as exc:
        view.problem = view.failure = f"bar store damaged: {exc} (delete the file to rebuild it from the broker)"
    except FeatureInputError as exc:
        view.problem = f"bad bars from the broker: {exc}"
    except (BrokerConnectionError, BrokerTimeoutError):
        raise
    except BrokerError as exc:
        view.problem = view.failure = f"hourly bars unavailable: {exc}"
    if bars is not None:
        _p_up(view, bars, champion, run)
    try:
        q = broker.current_price(sym)
        view.mark, view.quote_delayed = q.price, q.delayed
        if q.delayed:
            view.price_problem = f"only a delayed quote ({q.price:.2f}): entries are never sized from stale prices"
        else:
            view.price = q.price
    except (BrokerConnectionError, BrokerTimeoutError):
        raise
    except BrokerError as exc:
        view.price_problem = f"no quote: {exc}"
    return view


def _p_up(view: SymbolView, bars, champion: Champion, run: FlowRun) -> None:
    session: Session = run.session
    before = bars[bars.index < session.open]
    view.previous_close = float(before["close"].iloc[-1]) if len(before) else None
    view.bars = len(bars)
    if len(bars):
        view.last_bar = bars.index[-1].isoformat()
    stale = bars_problem(bars, run.as_of)
    if stale:
        view.problem = stale
        return
    try:
        feats = compute_features(bars)
    except FeatureInputError as exc:
        view.problem = f"bad bars: {exc}"
        return
    try:
        view.p_up = champion.predictor.predict_latest(feats)
    except ValueError as exc:
        view.problem = f"too little history for the features ({len(bars)} complete bars): {exc}"


# --------------------------------------------------------------------------------------------------------------
# journal the decision, send its order


def runs_sessions(entry: dt.datetime, as_of: dt.datetime) -> list[Session]:
    """The sessions from the entry's date to as_of's date (for `core.strategies.mtf.runs_held`)."""
    from core.calendar import NY

    return sessions(entry.astimezone(NY).date(), as_of.astimezone(NY).date())


@task(cache_policy=NONE)
def journal_decision(run: FlowRun, symbol: str, decision: MtfDecision, view: SymbolView | None,
                     inputs: dict[str, Any], ref: str | None) -> None:
    """Record the decision (with every input) in `signals`, before any order is sent."""
    p = view.p_up if view else None
    seen = "" if view is None else (
        f"P(up) {p:.3f}" if p is not None else f"no P(up) ({view.problem})") + (
        f", price {view.price:.2f}" if view.price else f", {view.price_problem}" if view.price_problem else "")
    qty = f" {decision.quantity}" if decision.quantity else ""
    log.info("%s: %s -> %s%s: %s", symbol, seen or "(no new observation)", decision.action, qty, decision.reason)
    with run.journal.transaction() as tx:
        tx.record_signal(STRATEGY, symbol, run.as_of, run.session.date, decision.action, decision.reason,
                         signal=None if p is None else ("UP" if p >= 0.5 else "DOWN"), probability=p,
                         price=(view.price or view.mark) if view else None,
                         quantity=decision.quantity or None, order_ref=ref, inputs=inputs, run_id=run.run_id)


@task(cache_policy=NONE)
def send_order(run: FlowRun, broker: Broker, gateway: OrderGateway, symbol: str, action: str, quantity: int,
               ref: str, fill_timeout: float) -> dict[str, Any]:
    """Send the order through the gateway (idempotent by orderRef), wait up to `fill_timeout` seconds for its
    fill and journal the fill. Returns {'status', 'filled', 'avg_price', 'existing', 'note'}.

    A kill switch or position break is reported in 'note' (nothing was sent); broker rejections raise.
    """
    intent = "entry" if action == "BUY" else "exit"
    request = OrderRequest(symbol=symbol, action=action, quantity=int(quantity), order_ref=ref)
    try:
        info = gateway.submit(request, strategy=STRATEGY, intent=intent, session=run.session.date, as_of=run.as_of)
    except OrderBlockedError as exc:
        return {"status": "not sent", "filled": 0.0, "avg_price": None, "existing": False, "note": str(exc)}
    note = ""
    if not info.existing and not info.is_done:
        try:
            info = broker.wait_for_fill(info.order_id, fill_timeout)
        except BrokerTimeoutError:
            note = f"not filled within {fill_timeout:g} s; the next run records its fill"
            log.warning("%s: %s", ref, note)
        except OrderNotFilledError as exc:
            note = str(exc)
    gateway.record_fills(info, STRATEGY)
    return {"status": info.status, "filled": info.filled, "avg_price": info.avg_fill_price or None,
            "existing": info.existing, "note": note or ("sent before (rerun): nothing new sent" if info.existing
                                                        else "")}


def mtf_order_ref(symbol: str, as_of: dt.datetime, decision: MtfDecision) -> str | None:
    """orderRef of a BUY/SELL decision: unique to symbol, run (as_of to the minute) and intent."""
    return order_ref(STRATEGY, symbol, as_of, decision.intent) if decision.intent else None


def view_inputs(view: SymbolView) -> dict[str, Any]:
    """The view as JSON-able journal inputs."""
    return {k: v for k, v in asdict(view).items() if k != "symbol"}
