"""Deployment `ema-update` (at the close: 16:00, or 13:00 on early closes): fold the session's official close
into the EMAs (strategies.md, "Update at the close") with `core.strategies.ema.close_update`.

1. Wait, with a bounded retry, until the session's daily bar is final (`core.strategies.ema.official_close`: the
   broker's clock at or after the close + `ema_close_settle_seconds`, and a bar of the session present; looked at
   every `ema_close_retry_seconds`, failing after `ema_close_max_wait_seconds`).
2. Fold its close into the previous session's final state (journal; caught up or initialised from the broker's
   daily bars when needed) and journal the new state in `ema_state` (once per session) and the signal in
   `signals` (strategy 'ema', as_of = the close).
3. Final BEAR while still long (the 15:55 price said BULL): exit at the next session's open. The exit is a
   market DAY order sent now, after the close (orderRef `ema-SMH-<session>-exit-open`), after cancelling the
   stop (the exit replaces it; both could fill and leave a short). IB holds a DAY order sent outside regular
   hours until the next session opens (warning 399: "will not be placed at the exchange until ... 09:30") and
   fills it in the opening trades; the paper exchange works an order from the first bar starting after it was
   placed: the next session's 09:30 bar, filled at its open. The next morning's `equity-snapshot` waits for that
   fill before deciding about a stop. Not sent when the broker's clock is already past the next open.

A run that starts late still folds the close (the EMA state must have every session); only the exit depends on
the time. A rerun with the same `as_of` records nothing new and sends nothing new.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow

from core.calendar import next_session
from core.strategies.ema import close_update, next_open_exit
from tasks.ema import (
    ema_params,
    ema_ref,
    JournaledSignal,
    follow_or_decide,
    load_ema_state,
    position_qty,
    record_final_state,
    record_signal,
    report,
    require_session,
    sell_position,
    stored_state,
    symbol_of,
    sync_fills,
    wait_final_close,
)
from tasks.run_policy import run_policy
from tasks.runtime import FlowRun, flow_run
from tasks.ui import ema_chart_or_none, run_name


@flow(name="ema-update", flow_run_name=run_name("ema-update"), **run_policy("ema-update"))
def ema_update(as_of: datetime | None = None) -> dict[str, Any]:
    """Fold the session's official close into the EMAs; send the exit for the next open when the final signal is
    BEAR while long. `as_of` (aware; default: the run's scheduled start) must be at or after the session's
    close, on the session's date. Returns a summary dict."""
    with flow_run("ema-update", as_of) as run:
        session = require_session(run, lambda s: (s.close, None), "(ema-update runs at or after the close)")
        with run.broker() as broker:
            gateway = run.gateway(broker)
            sync_fills(run, broker, gateway)
            d, rerun = follow_or_decide(run, lambda: _fold(run, broker))
            decision, qty, ref, reason, inputs = d.decision, d.quantity, d.order_ref, d.reason, d.inputs
            summary: dict[str, Any] = {"session": str(session.date), "close": inputs.get("close"),
                                       "signal": inputs.get("signal"), "ema_fast": inputs.get("ema_fast"),
                                       "ema_slow": inputs.get("ema_slow"), "decision": decision,
                                       "order_ref": ref, "reason": reason, "rerun": rerun}
            if decision == "SELL":
                summary.update(_send_exit(run, broker, gateway, qty, ref))
        report(run, f"ema-update {session.date}: {inputs.get('signal')}",
               f"{inputs.get('signal')} close {inputs.get('close')}: {reason}", summary, inputs,
               chart=ema_chart_or_none(run))
        return summary


def _fold(run: FlowRun, broker) -> JournaledSignal:
    """Wait for the final bar, fold it (core), journal state and signal."""
    session, symbol = require_session(run), symbol_of(run)
    state, source = load_ema_state(run, broker)
    stored = stored_state(run, on=session.date)
    if stored is not None:
        close, bar_reason = stored[0], "the journal already holds this session's close"
    else:
        got = wait_final_close(run, broker, session)
        close, bar_reason = float(got.close), got.reason
    qty = position_qty(broker, symbol)
    upd = close_update(state, session.date, close, qty)
    if stored is not None and abs(stored[1].ema_fast - upd.state.ema_fast) > 1e-9:
        raise RuntimeError(f"the journal's EMA state of {session.date} does not follow from the previous state "
                           f"and its close {close}: the ema_state table needs checking")
    record_final_state(run, close, upd.state)
    nxt = next_session(session.date)
    send, reason = next_open_exit(upd, broker.current_time(), nxt.open)
    ref = ema_ref(run, "exit-open") if send else None
    decision = "SELL" if send else "HOLD"
    p = ema_params(run)
    inputs = {"close": close, "bar": bar_reason, "state_source": source, "previous_session": state.session,
              "previous_ema_fast": state.ema_fast, "previous_ema_slow": state.ema_slow, "ema_fast": upd.state.ema_fast,
              "ema_slow": upd.state.ema_slow, "signal": upd.signal.value, "closes_seen": upd.state.count,
              "fast_span": p.fast, "slow_span": p.slow, "position_qty": qty, "exit_next_open": upd.exit_next_open,
              "next_open": nxt.open, "order_ref": ref, "as_of": run.as_of}
    record_signal(run, "ema", decision, reason, signal=upd.signal.value, price=close,
                  quantity=qty if send else None, ref=ref, inputs=inputs)
    return JournaledSignal(decision, qty if send else 0, ref, reason, inputs)


def _send_exit(run: FlowRun, broker, gateway, qty: int, ref: str) -> dict[str, Any]:
    """Cancel the stop, then send the market DAY sell that the broker works at the next open."""
    info, what = sell_position(run, broker, gateway, ref=ref, intent="exit-open", shares=qty,
                               why="replaced by the exit at the next open")
    return {"exit": what, "exit_quantity": int(info.quantity) if info is not None else 0}
