"""Deployment `ema-entry` (5 minutes before the close: 15:55, or 12:55 on early closes): the EMA 25/125
decision on SMH (strategies.md, "Decision"), made by `core.strategies.ema.decide_before_close`.

1. Refuse a late run (more than `late_run_max_minutes` after `as_of` on the broker's clock): it ends Cancelled,
   named SkippedLate, with the reason in the journal's `flow_events`; nothing is traded.
2. Journal today's fills of EMA orders (a stop that fired during the session).
3. Inputs: the final EMA state of the previous session (journal; caught up or initialised from the broker's
   daily bars when needed), the SMH price, VIX (current, else its latest daily close, else L = 3.0 with the
   reason), NetLiquidation, the funds available for sizing (BuyingPower), the SMH position. Any of them missing
   or NaN: the run fails saying which, and decides nothing. A BUY is then sized to what the account may hold
   overnight: IB's what-if of the order (`tasks.margin.fit_entry`); the cap and the what-if numbers are in the
   decision's inputs (`whatif_*`, `margin_*`).
4. The decision and every input go to `signals` (strategy 'ema', as_of) before any order. BUY (BULL and flat,
   also after a stop earlier in the day): market order, wait for the fill (bounded), then the protective stop
   at `stop_price(fill price, E0, shares)`. SELL (BEAR and long): cancel the stop, then sell the position at
   market.

A rerun with the same `as_of` follows the journaled decision: the orderRefs are the same, so nothing is sent twice;
a step the first run did not finish (e.g. the stop after the fill) is done.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from prefect import flow

from core.broker import OrderRequest
from core.orders import UnprotectedPositionError
from core.strategies.ema import decide_before_close
from tasks.ema import (
    arm_stop,
    await_fill,
    day_start_equity,
    ema_params,
    ema_ref,
    JournaledSignal,
    follow_or_decide,
    load_ema_state,
    order_known,
    position_qty,
    read_market,
    record_signal,
    report,
    require_session,
    sell_position,
    symbol_of,
    sync_fills,
)
from tasks.margin import fit_entry
from tasks.run_policy import run_policy
from tasks.runtime import FlowRun, flow_run
from tasks.ui import run_name


@flow(name="ema-entry", flow_run_name=run_name("ema-entry"), **run_policy("ema-entry"))
def ema_entry(as_of: datetime | None = None) -> dict[str, Any] | Any:
    """The 15:55 (12:55) EMA decision and its orders. `as_of` (aware; default: the run's scheduled start) must be
    in the session's last `ema_entry_minutes_before_close` minutes. Returns a summary dict, or the SkippedLate
    state of a late run."""
    with flow_run("ema-entry", as_of) as run:
        before = timedelta(minutes=run.settings.ema_entry_minutes_before_close)
        session = require_session(run, lambda s: (s.close - before, s.close), "(ema-entry decides before the close)")
        with run.broker() as broker:
            late = run.refuse_if_late(broker, run.settings.late_run_max_minutes)
            if late is not None:
                return late
            gateway = run.gateway(broker)
            sync_fills(run, broker, gateway)
            d, rerun = follow_or_decide(run, lambda: _decide(run, broker))
            action, shares, ref, inputs, reason = d.decision, d.quantity, d.order_ref, d.inputs, d.reason
            summary: dict[str, Any] = {"session": str(session.date), "decision": action, "shares": shares,
                                       "order_ref": ref, "reason": reason, "rerun": rerun}
            if action == "BUY":
                summary.update(_enter(run, broker, gateway, shares, ref, inputs))
            elif action == "SELL":
                summary.update(_exit(run, broker, gateway, shares, ref))
        what = f"{action} {shares} {symbol_of(run)}" if shares else action
        report(run, f"ema-entry {session.date}: {action}", f"{what}: {reason}", summary, inputs)
        return summary


def _decide(run: FlowRun, broker) -> JournaledSignal:
    """Observe, decide (core), journal the decision with every input."""
    session = require_session(run)
    state, source = load_ema_state(run, broker)
    m = read_market(run, broker)
    e0 = day_start_equity(run)
    d = decide_before_close(state, m.price, m.position_qty, m.account.net_liquidation, m.account.buying_power,
                            m.vix, ema_params(run), session=session.date)
    action, shares, reason = d.action.value, d.shares, d.reason
    ref = ema_ref(run, "entry") if action == "BUY" else ema_ref(run, "exit") if action == "SELL" else None
    inputs = d.as_record()
    if action == "BUY":  # what the account allows holding overnight, from IB's what-if of the order
        fit = fit_entry(broker, symbol_of(run), shares, ref)
        inputs.update(fit.record)
        shares, reason = fit.shares, f"{reason}; {fit.reason}"
        if shares == 0:
            action, ref = "NO_TRADE", None
    inputs.update({
        "state_source": source, "final_session": state.session, "final_ema_fast": state.ema_fast,
        "final_ema_slow": state.ema_slow, "final_signal": state.signal.value,
        "e0": e0, "equity": m.account.net_liquidation, "account_available_funds": m.account.available_funds,
        "buying_power": m.account.buying_power, "cash": m.account.cash, "sizing_funds": "BuyingPower",
        "vix_notes": m.vix_notes, "vix_last_close_session": m.vix.last_close_session, "quote": m.quote,
        "order_ref": ref, "as_of": run.as_of,
    })
    inputs["shares"] = shares
    record_signal(run, "ema", action, reason, signal=d.signal.value, price=d.price, quantity=shares, ref=ref,
                  inputs=inputs)
    return JournaledSignal(action, shares, ref, reason, inputs)


def _enter(run: FlowRun, broker, gateway, shares: int, ref: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """Buy `shares` at market, wait for the fill (cancel it when it does not come in time), arm the protective
    stop on what is held (also after an incomplete fill, before failing)."""
    symbol, session = symbol_of(run), require_session(run)
    if not order_known(run, ref):
        held = position_qty(broker, symbol)
        if held != 0:
            return {"entry": f"not sent: the position is {held} shares now, not flat as decided"}
    info = gateway.submit(OrderRequest(symbol=symbol, action="BUY", quantity=int(shares), order_ref=ref),
                          strategy="ema", intent="entry", session=session.date, as_of=run.as_of)
    fill = await_fill(run, broker, gateway, info, cancel_unfilled=True)
    out: dict[str, Any] = {"filled": fill.shares, "fill_price": fill.price}
    held = position_qty(broker, symbol)
    if held > 0:
        # E0 as the decision read it (journaled with it): no journal read stands between a fill and its stop
        e0, source = inputs.get("e0"), "day_start"
        if e0 is None:
            e0, source = float(inputs["equity"]), "NetLiquidation at the decision (no day-start snapshot)"
        try:
            p_ref = fill.price or broker.current_price(symbol).price
            out["stop"] = arm_stop(run, broker, gateway, intent="entry-stop", qty=held, p_ref=float(p_ref),
                                   e0=float(e0), e0_source=source, protects_fill=True,
                                   context=f"entry {ref}: {fill.shares} filled at {p_ref:.4f}")
        except Exception as exc:
            gateway.protection[symbol] = f"{held} shares held WITHOUT A STOP ({type(exc).__name__}: {exc})"
            raise UnprotectedPositionError(
                f"UNPROTECTED: {held} {symbol} held without a stop: the entry {ref} filled {fill.shares} shares and "
                f"its stop could not be placed ({type(exc).__name__}: {exc}); place one by hand or rerun ema-entry "
                "with the same as_of") from exc
    if fill.error is not None:
        raise fill.error
    return out


def _exit(run: FlowRun, broker, gateway, shares: int, ref: str) -> dict[str, Any]:
    """Cancel the working stop, then sell the position at market and wait for the fill."""
    info, what = sell_position(run, broker, gateway, ref=ref, intent="exit", shares=shares,
                               why="the EMA exit sells the position")
    if info is None:
        return {"exit": what}
    fill = await_fill(run, broker, gateway, info)
    if fill.error is not None:
        raise fill.error
    return {"exit": what, "filled": fill.shares, "fill_price": fill.price}
