"""Prefect tasks of the EMA 25/125 flows (`equity-snapshot`, `ema-entry`, `ema-update`): the broker and journal
steps. The decisions are `core.strategies.ema`'s; these tasks observe (prices, VIX, account, positions, daily
bars), journal, and send orders through the run's `OrderGateway`. Each takes the run (`tasks.runtime.FlowRun`)
and the connected broker and is called directly, never `.submit`ted (the IB connection is not thread-safe).

orderRefs (`core.orders.order_ref`; D = the New York date of the session the order is decided in):

| orderRef                 | order                                                   | sent by                     |
|--------------------------|---------------------------------------------------------|-----------------------------|
| `ema-SMH-D-stop`         | protective STP SELL, GTC, for the position held at the open | equity-snapshot (09:30) |
| `ema-SMH-D-entry`        | MKT BUY, provisional BULL and flat                      | ema-entry (15:55 / 12:55)   |
| `ema-SMH-D-entry-stop`   | protective STP SELL, GTC, once the entry filled         | ema-entry                   |
| `ema-SMH-D-exit`         | MKT SELL, provisional BEAR and long                     | ema-entry                   |
| `ema-SMH-D-exit-open`    | MKT SELL, DAY, sent after D's close: final BEAR while long; IB holds it until the next open | ema-update |
| `ema-SMH-D-stop2`        | MKT SELL, the daily stop's second line                  | mtf-signal (`tasks/ema_stop.py`) |

Stop orders are GTC so that the last one armed keeps protecting the position while this system is down. A new
stop is placed first and the working ones are cancelled after it (the position is never without a stop; for that
moment two work, and when an old one fills before its cancel lands, leaving the position flat, the new one is
cancelled too). The stop of an entry's fill is placed whatever the journal does: when the journal cannot be
written (held by another process, a full disk) its records are kept and written when it is back
(`core.orders.OrderGateway.write_or_keep`), and the run then fails with `JournalBehindError`, whose first line
says what was sent and what protects it.

Journal `signals` rows, keyed (strategy, symbol, as_of): `ema` at the entry time (the 15:55 decision) and at the
close (the update), `ema_stop` when a stop is armed (09:30, or after an entry), `ema_stop2` for a second-line exit.
Every order's row carries its `order_ref`, so `signals JOIN orders JOIN executions` explains any fill (README).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NONE

from core.broker import (
    AccountValues,
    Broker,
    BrokerError,
    BrokerTimeoutError,
    OrderInfo,
    OrderNotFilledError,
    OrderRequest,
    empty_bars,
)
from core.calendar import Session, previous_session, sessions
from core.journal import UNAVAILABLE as JOURNAL_UNAVAILABLE
from core.order_status import OrderStatus
from core.orders import OrderGateway, order_ref
from core.strategies.ema import (
    DailyClose,
    EmaParams,
    EmaState,
    VixInfo,
    ema_series,
    official_close,
    stop_order_price,
    stop_price,
)
from core.validation import require_positive
from tasks.runtime import FlowRun

log = logging.getLogger(__name__)

VIX = "VIX"


class HalfKnownStateError(RuntimeError):
    """An input the decision needs is missing or unusable (no price, NaN, a short or fractional position, an
    incomplete EMA history): the run decides nothing and fails, saying what was missing."""


# --------------------------------------------------------------------------------------------------------------
# small reads
# --------------------------------------------------------------------------------------------------------------


def symbol_of(run: FlowRun) -> str:
    """The EMA strategy's symbol (TRADEFLOW_EMA_SYMBOL, SMH)."""
    return run.settings.ema_symbol.upper()


def ema_ref(run: FlowRun, intent: str) -> str:
    """The orderRef of this session's EMA order with `intent` (see the module docstring)."""
    return order_ref("ema", symbol_of(run), require_session(run).date, intent)


def require_session(run: FlowRun, window: Callable[[Session], tuple[dt.datetime | None, dt.datetime | None]]
                    | None = None, what: str = "") -> Session:
    """The run's session. Raises ValueError when `as_of` is not on an NYSE session day, or outside
    [start, end) of `window(session)` (what the deployment decides at, e.g. ema-entry: 15:55 to the close;
    None for an open end)."""
    s = run.session
    if s is None:
        raise ValueError(f"{run.deployment}: as_of {run.as_of.isoformat()} is not on an NYSE session day: "
                         "nothing to do")
    earliest, latest = window(s) if window is not None else (None, None)
    if (earliest is not None and run.as_of < earliest) or (latest is not None and run.as_of >= latest):
        lo = earliest.isoformat() if earliest else "-"
        hi = latest.isoformat() if latest else "-"
        raise ValueError(f"{run.deployment}: as_of {run.as_of.isoformat()} is outside [{lo}, {hi}) {what}")
    return s


def ema_params(run: FlowRun) -> EmaParams:
    """The strategy parameters of the run's settings."""
    return EmaParams.from_settings(run.settings)


def position_qty(broker: Broker, symbol: str) -> int:
    """SMH shares held (>= 0). Raises HalfKnownStateError for a fractional or short position (the strategy is
    long only; a short means something else traded it: decide nothing)."""
    raw = sum(p.quantity for p in broker.positions() if p.symbol.upper() == symbol)
    if not math.isfinite(raw) or raw != int(raw) or raw < 0:
        raise HalfKnownStateError(f"{symbol} position {raw!r} shares at the broker is not a long whole number: "
                                  "the EMA strategy does not act on it (check the account)")
    return int(raw)


def day_start_equity(run: FlowRun) -> float | None:
    """E0: the session's recorded day-start NetLiquidation (USD), or None when none is recorded."""
    if run.session is None:
        return None
    with run.journal.transaction() as tx:
        return tx.day_start_equity(run.session.date)


@dataclass(frozen=True)
class JournaledSignal:
    """A decision already journaled for this run's (strategy, symbol, as_of): a rerun follows it."""

    decision: str
    quantity: int
    order_ref: str | None
    reason: str
    inputs: dict[str, Any]


def journaled_signal(run: FlowRun, strategy: str) -> JournaledSignal | None:
    """The `signals` row of `strategy` for this run's symbol and `as_of`, if a previous run wrote it."""
    with run.journal.transaction() as tx:
        row = tx.signal(strategy, symbol_of(run), run.as_of)
    if row is None:
        return None
    return JournaledSignal(row["decision"], int(row["quantity"] or 0), row["order_ref"], row["reason"], row["inputs"])


def follow_or_decide(run: FlowRun, decide: Callable[[], JournaledSignal]) -> tuple[JournaledSignal, bool]:
    """The run's 'ema' decision: the one journaled for this `as_of` by an earlier run (a rerun follows it), else
    `decide()` (which journals it). Returns (decision, whether it is a rerun)."""
    prior = journaled_signal(run, "ema")
    if prior is not None:
        return replace(prior, reason=f"(rerun) {prior.reason}"), True
    return decide(), False


KEY_INPUTS = ("decision", "signal", "price", "close", "ema_fast", "ema_slow", "final_ema_fast", "final_ema_slow",
              "vix_used", "vix_source", "leverage", "e0", "equity", "buying_power", "position_qty", "target_shares",
              "shares", "filled", "fill_price", "order_ref", "stop", "exit", "entry")
"""The inputs an EMA artifact shows under its sentence, in this order (the table artifact holds them all)."""


def report(run: FlowRun, title: str, outcome: str, summary: dict[str, Any], table: dict[str, Any],
           chart: bytes | None = None) -> None:
    """End of a flow: the outcome and summary journaled at completion (`flow_events`) and the run's artifact:
    `title`, the `outcome` sentence, the key inputs (`KEY_INPUTS` of `table` and `summary`), then `chart` (a
    PNG) when given; every input of `table` as rows of name and value in the table artifact beside it."""
    from core.charts import png_markdown

    run.outcome = outcome
    run.details = summary
    seen = {**table, **summary}
    rows = [(k, seen[k]) for k in KEY_INPUTS if seen.get(k) not in (None, "", {})]
    md = f"### {title}\n\n{outcome}\n\n| input | value |\n|---|---|\n" + "".join(
        f"| {k} | {_cell(v)} |\n" for k, v in rows) + "\nEvery input: the table artifact beside this one.\n"
    if chart is not None:
        md += f"\n{png_markdown(chart, title)}\n"
    run.publish(md, table=[{"name": k, "value": str(v)} for k, v in sorted(table.items())])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}".rstrip("0").rstrip(".")
    if isinstance(value, dict):
        return ", ".join(f"{k} {_cell(v)}" for k, v in value.items() if v not in (None, ""))[:200]
    return str(value).replace("|", "/")


def order_known(run: FlowRun, ref: str) -> bool:
    """Whether the journal holds an order with this orderRef (then the gateway, not a fresh decision, decides
    whether anything is sent)."""
    with run.journal.transaction() as tx:
        return tx.order(ref) is not None


def record_signal(run: FlowRun, strategy: str, decision: str, reason: str, *, signal: str | None = None,
                  price: float | None = None, quantity: float | None = None, ref: str | None = None,
                  inputs: dict[str, Any] | None = None, keep_with: OrderGateway | None = None) -> bool:
    """Journal one decision of this run (once per strategy, symbol and as_of). With `keep_with`, a journal that
    cannot be written now does not raise: the gateway keeps the write (`OrderGateway.write_or_keep`)."""
    symbol, session = symbol_of(run), require_session(run).date
    what = f"{decision} {quantity:g} {symbol}" if quantity else decision
    log.info("decided (%s%s): %s: %s", strategy, f", signal {signal}" if signal else "", what, reason)

    def write(tx) -> bool:
        return tx.record_signal(strategy, symbol, run.as_of, session, decision, reason, signal=signal, price=price,
                                quantity=quantity or None, order_ref=ref, inputs=inputs, run_id=run.run_id)

    if keep_with is not None:
        return keep_with.write_or_keep(f"the {strategy} signal {ref or decision} of {run.as_of.isoformat()}", write)
    with run.journal.transaction() as tx:
        return write(tx)


# --------------------------------------------------------------------------------------------------------------
# market inputs
# --------------------------------------------------------------------------------------------------------------


@dataclass
class MarketRead:
    """What the 15:55 decision observed. Prices USD, quantities shares.

    Attributes:
        price: the current SMH price (live, not delayed).
        vix: current VIX and its latest daily close (None when unavailable), with `vix_notes` saying why.
        account: NetLiquidation, AvailableFunds, BuyingPower, cash.
        position_qty: SMH shares held.
    """

    price: float
    quote: dict[str, Any]
    vix: VixInfo
    vix_notes: list[str]
    account: AccountValues
    position_qty: int


@task(cache_policy=NONE)
def read_market(run: FlowRun, broker: Broker) -> MarketRead:
    """Observe the decision's inputs: SMH price, VIX (current, else the latest daily close before today),
    account values, SMH position.

    Raises:
        HalfKnownStateError: no usable SMH price (missing, NaN, <= 0, or delayed data), an unusable
            NetLiquidation / buying power, or a position that is not a long whole number.
        core.broker.BrokerError: the broker failed to answer for the price or the account.
    """
    symbol = symbol_of(run)
    session = require_session(run)
    quote = broker.current_price(symbol)
    if quote.delayed:
        raise HalfKnownStateError(f"{symbol} price {quote.price!r} is delayed market data: a decision on a price "
                                  "15 minutes old is not made (subscribe to live data)")
    try:
        price = require_positive(f"{symbol} price", quote.price)
    except ValueError as exc:
        raise HalfKnownStateError(f"{exc}: no decision") from None
    notes: list[str] = []
    current: float | None = None
    try:
        current = broker.vix()
    except BrokerError as exc:
        notes.append(f"VIX current value unavailable: {exc}")
    last_close: float | None = None
    last_session: dt.date | None = None
    try:
        bars = broker.historical_bars(VIX, "1 day", "10 D")
        before = bars[[ts.date() < session.date for ts in bars.index]]
        if len(before):
            last_close, last_session = float(before["close"].iloc[-1]), before.index[-1].date()
        else:
            notes.append("VIX daily bars: none before today")
    except BrokerError as exc:
        notes.append(f"VIX daily close unavailable: {exc}")
    account = broker.account_values()
    for name, value in (("NetLiquidation", account.net_liquidation), ("BuyingPower", account.buying_power),
                        ("AvailableFunds", account.available_funds)):
        if not math.isfinite(value):
            raise HalfKnownStateError(f"{name} {value!r} from the broker is not a number: no decision")
    if account.net_liquidation <= 0:
        raise HalfKnownStateError(f"NetLiquidation {account.net_liquidation!r} USD is not positive: no decision")
    qty = position_qty(broker, symbol)
    log.info("observed: %s %.2f USD, VIX %s (last close %s), NetLiquidation %s USD, BuyingPower %s USD, "
             "%s position %d shares%s", symbol, price, _num(current), _num(last_close), f"{account.net_liquidation:,.2f}",
             f"{account.buying_power:,.2f}", symbol, qty, f"; {'; '.join(notes)}" if notes else "")
    return MarketRead(price=price, quote={"bid": quote.bid, "ask": quote.ask, "last": quote.last,
                                          "close": quote.close, "delayed": quote.delayed},
                      vix=VixInfo(current=current, last_close=last_close, last_close_session=last_session),
                      vix_notes=notes, account=account, position_qty=qty)


# --------------------------------------------------------------------------------------------------------------
# EMA state
# --------------------------------------------------------------------------------------------------------------


def _num(value: float | None) -> str:
    return "unavailable" if value is None else f"{value:.2f}"


def _daily_closes(broker: Broker, symbol: str, duration: str) -> pd.Series:
    """Daily closes by session date (USD) from the broker.

    Raises:
        HalfKnownStateError: a close is NaN, infinite or not > 0 (naming the first such session): no EMA is
            computed from a bad bar.
    """
    bars = broker.historical_bars(symbol, "1 day", duration)
    closes = pd.Series(bars["close"].to_numpy(dtype=float), index=[ts.date() for ts in bars.index], dtype=float)
    values = closes.to_numpy()
    bad = ~(np.isfinite(values) & (values > 0))
    if bad.any():
        first = int(np.argmax(bad))
        raise HalfKnownStateError(f"the broker's daily {symbol} bar of {closes.index[first]} has close "
                                  f"{values[first]!r} USD ({int(bad.sum())} unusable close(s) in {duration}): no EMA "
                                  "is computed from a bad bar")
    return closes


def _record_states(run: FlowRun, symbol: str, rows: list[tuple[dt.date, float, EmaState]]) -> int:
    with run.journal.transaction() as tx:
        return sum(tx.record_ema_state(symbol, s.session, close, s.ema_fast, s.ema_slow, fast_span=s.fast_span,
                                       slow_span=s.slow_span, signal=s.signal.value, closes_seen=s.count,
                                       as_of=run.as_of, run_id=run.run_id)
                   for _, close, s in rows)


def stored_state(run: FlowRun, before: dt.date | None = None, on: dt.date | None = None
                 ) -> tuple[float, EmaState] | None:
    """(close, final state) journaled for the session `on`, or for the latest session before `before`; None
    when there is none.

    Raises:
        HalfKnownStateError: the journal's spans differ from the settings' (TRADEFLOW_EMA_FAST/SLOW).
    """
    p = ema_params(run)
    with run.journal.transaction() as tx:
        row = tx.ema_state(symbol_of(run), on=on, before=None if on is not None else before)
    if row is None:
        return None
    session, close, fast, slow, seen, fs, ss = (row[k] for k in ("session", "close", "ema_fast", "ema_slow",
                                                                 "closes_seen", "fast_span", "slow_span"))
    if (fs, ss) != (p.fast, p.slow):
        raise HalfKnownStateError(f"the journal's EMA state uses spans {fs}/{ss}, the settings {p.fast}/{p.slow}: "
                                  "a state for other spans cannot be continued (restore the settings)")
    return float(close), EmaState(session=session, ema_fast=fast, ema_slow=slow, count=int(seen), fast_span=fs,
                                  slow_span=ss)


def _history_duration(min_history: int) -> str:
    """An IB duration holding comfortably more than `min_history` sessions of daily bars (about 250 a year)."""
    return f"{math.ceil(min_history / 200) + 1} Y"


@task(cache_policy=NONE)
def load_ema_state(run: FlowRun, broker: Broker) -> tuple[EmaState, str]:
    """The final EMA state of the session before the run's session, and where it came from.

    - `journal`: the journal holds it;
    - `caught_up`: the journal's latest state is older (an `ema-update` did not run): the missing sessions' final
      daily closes are folded in from the broker's daily bars and journaled;
    - `initialised`: no state yet: it is computed from at least `ema_min_history` sessions of the broker's daily
      bars (seeded with the first close) and every folded close is journaled in `ema_state`, so that the
      journal alone allows recomputing it.

    Raises:
        HalfKnownStateError: a session's daily bar is missing, or the history is shorter than ema_min_history.
        core.broker.BrokerError: from the historical data request.
    """
    symbol, p = symbol_of(run), ema_params(run)
    today = require_session(run).date
    target = previous_session(today).date
    stored = stored_state(run, before=today)
    state = stored[1] if stored is not None else None
    if state is not None and state.session == target:
        return state, "journal"
    if state is not None:
        missing = [s.date for s in sessions(state.session + dt.timedelta(days=1), target)]
        days = (today - state.session).days + 7
        closes = _daily_closes(broker, symbol, f"{days} D" if days <= 365 else f"{math.ceil(days / 365)} Y")
        rows: list[tuple[dt.date, float, EmaState]] = []
        for day in missing:
            if day not in closes.index:
                raise HalfKnownStateError(f"no daily {symbol} bar for session {day} from the broker: the EMA state "
                                          f"(last folded {state.session}) cannot be brought up to {target}")
            state = state.update(day, float(closes[day]))
            rows.append((day, float(closes[day]), state))
        _record_states(run, symbol, rows)
        log.warning("EMA state caught up over %d missed session(s) to %s", len(rows), target)
        return state, "caught_up"
    closes = _daily_closes(broker, symbol, _history_duration(p.min_history))
    closes = closes[[d <= target for d in closes.index]]
    if not len(closes) or closes.index[-1] != target:
        last = closes.index[-1] if len(closes) else None
        raise HalfKnownStateError(f"the broker's daily {symbol} bars end at {last}, not at the previous session "
                                  f"{target}: the EMA state cannot be initialised")
    if len(closes) < p.min_history:
        raise HalfKnownStateError(f"EMA history too short: the broker gave {len(closes)} sessions of daily "
                                  f"{symbol} closes, at least {p.min_history} are needed (ema_min_history)")
    fast, slow = ema_series(list(closes), p.fast), ema_series(list(closes), p.slow)
    rows = [(day, float(c), EmaState(session=day, ema_fast=f, ema_slow=s, count=i + 1, fast_span=p.fast,
                                     slow_span=p.slow))
            for i, (day, c, f, s) in enumerate(zip(closes.index, closes, fast, slow, strict=True))]
    _record_states(run, symbol, rows)
    log.info("EMA state initialised from %d sessions of daily %s closes (%s .. %s)", len(rows), symbol,
             rows[0][0], target)
    return rows[-1][2], "initialised"


def record_final_state(run: FlowRun, close: float, state: EmaState) -> bool:
    """Journal the session's final state (once per session: a rerun records nothing)."""
    return bool(_record_states(run, symbol_of(run), [(state.session, close, state)]))


@task(cache_policy=NONE)
def wait_final_close(run: FlowRun, broker: Broker, session: Session) -> DailyClose:
    """Wait, with a bounded retry, until the session's daily bar is final (`core.strategies.ema.official_close`):
    look every `ema_close_retry_seconds`, at most `ema_close_max_wait_seconds` (host seconds).

    Raises:
        BrokerTimeoutError: still not final when the wait ends (the message gives the last reason).
    """
    s = run.settings
    deadline = time.monotonic() + s.ema_close_max_wait_seconds
    symbol = symbol_of(run)
    while True:
        now = broker.current_time()
        bars = broker.historical_bars(symbol, "1 day", "5 D") if now >= session.close else empty_bars()
        got = official_close(bars, session.date, session.close, now, s.ema_close_settle_seconds)
        if got.final:
            return got
        if time.monotonic() + s.ema_close_retry_seconds > deadline:
            raise BrokerTimeoutError(f"the daily {symbol} bar of {session.date} is not final after waiting "
                                     f"{s.ema_close_max_wait_seconds:g} s: {got.reason}")
        log.info("daily bar not final yet (%s); looking again in %g s", got.reason, s.ema_close_retry_seconds)
        time.sleep(s.ema_close_retry_seconds)


# --------------------------------------------------------------------------------------------------------------
# orders
# --------------------------------------------------------------------------------------------------------------


def _is_ema_stop(o: OrderInfo, symbol: str) -> bool:
    return (o.symbol.upper() == symbol and o.order_type == "STP" and o.action == "SELL"
            and (o.order_ref or "").startswith(f"ema-{symbol}-"))


@task(cache_policy=NONE)
def cancel_ema_stops(run: FlowRun, broker: Broker, gateway: OrderGateway, keep: str | None = None,
                     why: str = "replaced") -> list[OrderInfo]:
    """Cancel the EMA strategy's working SMH stop orders (orderRef `ema-SMH-...`, except `keep`), whichever
    client placed them; journal their final status. Returns the broker's final view of each (a stop may have
    FILLED before the cancel arrived: callers re-read the position)."""
    symbol = symbol_of(run)
    done = []
    for o in broker.open_orders():
        if _is_ema_stop(o, symbol) and o.order_ref != keep:
            info = broker.cancel_order(o.order_id)
            gateway.record_status(info, message=f"cancelled by {run.deployment}: {why}", only_if_journaled=True)
            done.append(info)
    return done


def _prior_stop(run: FlowRun, gateway: OrderGateway, protects_fill: bool) -> JournaledSignal | None:
    """The `ema_stop` signal journaled for this as_of; for the stop of a fill, None when the journal cannot be
    read (the stop is then computed again from the same inputs)."""
    if protects_fill and gateway.kept:
        return None  # the journal is away: do not wait for it again before the stop is placed
    try:
        return journaled_signal(run, "ema_stop")
    except JOURNAL_UNAVAILABLE:
        if not protects_fill:
            raise
        return None


@task(cache_policy=NONE)
def arm_stop(run: FlowRun, broker: Broker, gateway: OrderGateway, *, intent: str, qty: int, p_ref: float,
             e0: float, e0_source: str, context: str, protects_fill: bool = False) -> dict[str, Any]:
    """Place the protective stop of `qty` SMH shares at `stop_price(p_ref, E0, qty)` (rounded up to the cent),
    GTC, then cancel the other working EMA stops (the new one works before the old go); journal it first as an
    `ema_stop` signal with its inputs. A rerun with the same as_of follows the journaled stop (same price,
    quantity, orderRef) and sends nothing new.

    With `protects_fill` (the stop of shares this run's entry just bought) the stop is placed whatever the
    journal does (its records kept when it cannot be written: `OrderGateway.write_or_keep`) and a halt or break
    does not refuse it.

    Returns:
        A dict: `order_ref`, `stop_price` (None when unreachable), `status`, and the inputs.

    Raises:
        ValueError: a bad input (e.g. qty <= 0, p_ref not > 0).
        core.orders.OrderBlockedError: trading is halted or SMH has a position break (checked before anything
            is sent or cancelled: the old stop stays working). Not with `protects_fill`.
        HalfKnownStateError: an old stop filled part of the position while being replaced (the new stop, for
            `qty` shares, stays working: check the account).
        core.broker.BrokerError: from sending.
    """
    symbol, f = symbol_of(run), run.settings.daily_stop_fraction
    ref = ema_ref(run, intent)
    prior = _prior_stop(run, gateway, protects_fill)
    if prior is not None and prior.order_ref == ref:
        inputs = prior.inputs
        qty, order_px = int(inputs["qty"]), inputs["stop_order_price"]
    else:
        p_stop = stop_price(p_ref, e0, qty, f)
        order_px = stop_order_price(p_stop)
        inputs = {"p_ref": p_ref, "e0": e0, "e0_source": e0_source, "qty": qty, "stop_fraction": f,
                  "p_stop": p_stop, "stop_order_price": order_px, "context": context}
        if order_px is None:
            reason = (f"{context}: no stop order: P_stop = {p_ref:.4f} - {f:g} x {e0:,.2f} / {qty} = {p_stop:.4f} "
                      "USD cannot be reached")
            record_signal(run, "ema_stop", "NO_TRADE", reason, price=p_ref, quantity=qty, inputs=inputs,
                          keep_with=gateway if protects_fill else None)
            gateway.protection[symbol] = f"{qty} shares held without a stop order ({reason})"
            return {"order_ref": None, "stop_price": None, "status": "none", **inputs}
        reason = (f"{context}: protective STP SELL {qty} {symbol} at {order_px:.2f} USD, where equity reaches "
                  f"{1 - f:g} x E0: P_stop = P_ref {p_ref:.4f} - {f:g} x E0 {e0:,.2f} / {qty} shares "
                  f"= {p_stop:.4f} USD")
        record_signal(run, "ema_stop", "SELL", reason, price=p_ref, quantity=qty, ref=ref, inputs=inputs,
                      keep_with=gateway if protects_fill else None)
    if order_px is None:
        return {"order_ref": None, "stop_price": None, "status": "none", **inputs}
    request = OrderRequest(symbol=symbol, action="SELL", quantity=int(qty), order_ref=ref, order_type="STP",
                           stop_price=float(order_px), tif="GTC")
    info = gateway.submit(request, strategy="ema", intent=intent, session=require_session(run).date,
                          as_of=run.as_of, protects_fill=protects_fill)
    gateway.protection[symbol] = (f"{int(qty)} shares held, protected by {ref} STP SELL {int(qty)} at "
                                  f"{float(order_px):.2f} USD ({info.status} at the broker)")
    replaced = cancel_ema_stops(run, broker, gateway, keep=ref, why=f"replaced by {ref}")
    if any(c.filled > 0 for c in replaced):  # an old stop filled before its cancel landed
        held = position_qty(broker, symbol)
        if held == 0:
            gone = broker.cancel_order(info.order_id)
            gateway.record_status(gone, message="cancelled: the stop it replaced filled first (flat)")
            gateway.protection[symbol] = "flat: the old stop filled while being replaced; the new one was cancelled"
            return {"order_ref": ref, "stop_price": order_px, "status": gone.status, **inputs}
        if held < qty:
            raise HalfKnownStateError(f"an old {symbol} stop filled while {ref} replaced it: {held} shares held, the "
                                      f"new stop is for {qty} (check the account; the new stop stays working)")
    return {"order_ref": ref, "stop_price": order_px, "status": info.status, **inputs}


@dataclass
class Fill:
    """What an order got: `shares` filled, `price` their average (USD), `error` when it did not fill completely."""

    shares: int
    price: float | None
    error: BrokerError | None = None
    fills: list[Any] = field(default_factory=list)


@task(cache_policy=NONE)
def await_fill(run: FlowRun, broker: Broker, gateway: OrderGateway, info: OrderInfo,
               cancel_unfilled: bool = False) -> Fill:
    """Wait (at most `ema_fill_timeout_seconds`) until this run's order `info` is filled, journal its executions
    and status. With `cancel_unfilled`, an order still working when the wait ends is cancelled (an entry that
    fills later, unwatched, would have no stop). Never raises for a fill that did not come: the returned `error`
    says so, and callers protect what was bought before failing."""
    error: BrokerError | None = None
    if not info.is_filled:
        log.info("waiting up to %g s for the fill of %s", run.settings.ema_fill_timeout_seconds, info.order_ref)
        try:
            info = broker.wait_for_fill(info.order_id, run.settings.ema_fill_timeout_seconds)
        except (BrokerTimeoutError, OrderNotFilledError) as exc:
            error = exc
            log.warning("%s did not fill: %s%s", info.order_ref, exc,
                        "; cancelling it" if cancel_unfilled and isinstance(exc, BrokerTimeoutError) else "")
            if cancel_unfilled and isinstance(exc, BrokerTimeoutError):
                info = broker.cancel_order(info.order_id)
                gateway.record_status(info, message=f"not filled within {run.settings.ema_fill_timeout_seconds:g} "
                                                    "s: cancelled")
    fills = gateway.record_fills(info, "ema")
    shares = sum(e.shares for e in fills)
    price = sum(e.shares * e.price for e in fills) / shares if shares else (info.avg_fill_price or None)
    return Fill(shares=int(shares or info.filled), price=price, error=error, fills=fills)


@task(cache_policy=NONE)
def sync_fills(run: FlowRun, broker: Broker, gateway: OrderGateway) -> int:
    """Journal today's broker executions of EMA orders (orderRef `ema-SMH-...`), e.g. a stop that filled while no
    flow watched, and mark fully filled journaled orders Filled. Returns how many executions were new."""
    symbol = symbol_of(run)
    fills = [e for e in broker.executions() if (e.order_ref or "").startswith(f"ema-{symbol}-")]
    new = gateway.record_executions(fills, "ema")
    by_ref: dict[str, list] = {}
    for e in fills:
        by_ref.setdefault(e.order_ref, []).append(e)
    with run.journal.transaction() as tx:
        for ref, got in by_ref.items():
            order = tx.order(ref)
            shares = sum(e.shares for e in got)
            if order is not None and shares >= float(order["quantity"]):
                last = max(e.time for e in got)
                tx.record_order_status(ref, OrderStatus.FILLED, last, filled=shares, remaining=0.0,
                                       avg_fill_price=sum(e.shares * e.price for e in got) / shares,
                                       perm_id=got[0].perm_id or None)
    return new


@task(cache_policy=NONE)
def wait_for_ref_fill(run: FlowRun, broker: Broker, ref: str, quantity: float) -> float:
    """Wait (at most `ema_fill_timeout_seconds`, looking every 0.5 s) until today's executions of orderRef `ref`
    add up to `quantity` shares; returns the shares filled (less on timeout). For orders another client placed
    (their fills are not pushed to this connection)."""
    deadline = time.monotonic() + run.settings.ema_fill_timeout_seconds
    while True:
        filled = sum(e.shares for e in broker.executions() if e.order_ref == ref)
        if filled >= quantity or time.monotonic() >= deadline:
            return filled
        time.sleep(0.5)


@task(cache_policy=NONE)
def sell_position(run: FlowRun, broker: Broker, gateway: OrderGateway, *, ref: str, intent: str, shares: int,
                  why: str) -> tuple[OrderInfo | None, str]:
    """Sell up to `shares` SMH at market (DAY) with orderRef `ref`. The first time (the journal does not hold
    `ref` yet), the working EMA stops are cancelled first (the sale replaces them; both could fill and leave a
    short) and the position re-read: nothing is sent when it is flat by then (a stop filled). A rerun sends
    nothing new (the gateway returns the order sent before). Returns (the order or None, what happened).

    Raises:
        core.orders.OrderBlockedError: trading is halted or SMH has a position break; checked BEFORE the stops
            are cancelled, so a refused sale never leaves the position without its stop.
    """
    symbol = symbol_of(run)
    if not order_known(run, ref):
        gateway.check_sendable(OrderRequest(symbol=symbol, action="SELL", quantity=max(int(shares), 1),
                                            order_ref=ref), strategy="ema", intent=intent)  # before the stop goes
        cancel_ema_stops(run, broker, gateway, why=why)
        held = position_qty(broker, symbol)
        if held == 0:
            return None, f"not sent: {symbol} is already flat (a stop exited first)"
        shares = min(int(shares), held)
    info = gateway.submit(OrderRequest(symbol=symbol, action="SELL", quantity=int(shares), order_ref=ref),
                          strategy="ema", intent=intent, session=require_session(run).date, as_of=run.as_of)
    return info, f"{'already sent' if info.existing else 'sent'}: SELL {int(info.quantity)} {symbol} ({info.status})"
