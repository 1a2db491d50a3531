"""`mtf-signal`: the MTF LSTM strategy's 5-minute run (every 5 minutes 09:35 … close, NYSE sessions).

One run, for `as_of` (default: its scheduled start):

1. Outside a session's (open, close] the run is skipped.
2. Connects to the Broker and refuses a late start: more than `TRADEFLOW_LATE_RUN_MAX_MINUTES` (default 3)
   after `as_of` on the broker's clock, the run ends `SkippedLate` and trades nothing. Three minutes leave a run
   that starts late two minutes before the next one, and its decision still uses the bar data it was scheduled for.
3. Runs the EMA daily stop's second line (`tasks.ema_stop`) first, before anything of the MTF strategy: a
   missing MTF model or any MTF failure never switches the EMA backstop off (its own failure is reported with
   the run's, after the MTF decisions). Then the champion model of every symbol (`settings.mtf_symbols`) is
   loaded, with numpy only (no TensorFlow: start-up stays around a second): a missing or unreadable model fails
   the run with a message naming the symbol, the fix and what the second line did; MTF trades nothing.
4. Records the strategy's executions the journal lacks, then reads positions (journal and broker), working
   orders, position breaks, and the decisions already journaled for this `as_of`.
5. Per symbol: brings the hourly bar store up to date (`core.bar_store`: only what is missing), keeps the bars
   complete at min(as_of, broker clock) (the bar still in progress is dropped, also when the run starts a second
   early), checks they are fresh, computes the 45 features and the champion's P(up) of the last complete bar,
   and takes the current quote.
6. The session's P&L (`core.strategies.mtf.day_pnl`: the journal's fills, current quotes, previous closes)
   and the daily loss limit: reached now or by an earlier run of the session (it latches), no entries for the
   rest of the session. A P&L that cannot be computed (no quote for a held symbol) holds entries back for this
   run only, and says why.
7. Per symbol: the decision (`core.strategies.mtf.decide`, the same function the backtest uses); an entry is
   then sized to what the margin allows by IB's what-if of the order (`tasks.margin.fit_entry`; NO_TRADE code
   'margin' when nothing fits), journaled in `signals` with all its inputs (the what-if numbers too) (also NO_TRADE / HOLD with P(up) and the reason), then its order through the
   gateway with orderRef `mtf-<SYMBOL>-<YYYYMMDDTHHMM>-entry|exit` (unique to symbol and run), a wait of up to
   `fill_timeout_seconds` for the fill, and the fill journaled. The edge gate (`models.gate`): when the
   champion's walk-forward evidence does not clear the bar and no operator allowed the symbol, an entry the rules
   would make is journaled as NO_TRADE (code `edge_gate`, saying what the rules would buy) and nothing is sent;
   exits of a position still go out.
8. Publishes an artifact: a table of symbol, P(up), decision, reason and order.

Reruns: a symbol whose decision is already journaled for this `as_of` is not decided again; its journaled
decision is replayed (its order re-submitted through the gateway, which sends nothing when the order was sent),
so a retry in the UI sends nothing new even if the market or the model changed meanwhile.

Failures: a model problem fails the run before any MTF order is sent; bad or stale bars give NO_TRADE (HOLD when
long) with the reason; a broker error for one symbol, a damaged bar store file, or an order the broker rejects,
is journaled, the other symbols are still decided, and the run then fails so the alert fires.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from prefect import flow

from core.orders import OrderBlockedError
from core.strategies.mtf import MtfDecision, MtfRules, day_pnl, decide, loss_limit_reached, runs_held
from models.gate import GateStatus
from tasks.ema_stop import ema_stop_second_line
from tasks.margin import fit_entry
from tasks.mtf_signal import (BookState, Champion, ModelUnavailableError, SymbolView, edge_gates, journal_decision,
                              load_champions, mtf_order_ref, observe_symbol, read_book, runs_sessions, send_order,
                              view_inputs)
from tasks.run_policy import run_policy
from tasks.runtime import FlowRun, flow_run
from tasks.ui import run_name

DEPLOYMENT = "mtf-signal"


@flow(name=DEPLOYMENT, flow_run_name=run_name(DEPLOYMENT), **run_policy(DEPLOYMENT))
def mtf_signal(as_of: datetime | None = None, symbols: list[str] | None = None,
               fill_timeout_seconds: float = 10.0) -> dict[str, Any]:
    """One 5-minute run of the MTF strategy (module docstring).

    Args:
        as_of: the run's time (aware); default its scheduled start.
        symbols: default `settings.mtf_symbols`.
        fill_timeout_seconds: how long to wait for a market order's fill before leaving it to the next run.

    Returns:
        {"as_of", "decisions": [{symbol, p_up, decision, reason, order_ref, order, ...}], "day_pnl",
        "loss_limit_reached", "ema_stop"}, or the `SkippedLate` state of a late or off-session run.

    Raises:
        tasks.mtf_signal.ModelUnavailableError: a symbol has no usable champion (MTF traded nothing; the EMA
            stop's second line ran first and the message says what it did).
        RuntimeError: a broker error or rejected order for some symbol (the others were decided).
    """
    with flow_run(DEPLOYMENT, as_of) as run:
        s = run.settings
        syms = [x.upper() for x in (symbols or s.mtf_symbols)]
        session = run.session
        if session is None or not session.open < run.as_of <= session.close:
            return run.skip(f"{run.as_of.isoformat()} is not inside an NYSE session's (open, close]: no signal")
        failures: list[str] = []
        with run.broker() as broker:
            late = run.refuse_if_late(broker, s.late_run_max_minutes)
            if late is not None:
                return late
            gateway = run.gateway(broker)
            # the EMA backstop first, independent of the MTF models and of anything the MTF strategy does
            stop = _second_line(run, broker, failures)
            champions = _champions(run, syms, stop)
            gates = edge_gates(run, champions)
            rules = MtfRules.from_settings(s)
            cutoff = min(run.as_of, broker.current_time())
            book = read_book(run, broker, gateway)
            views = {sym: observe_symbol(run, broker, champions[sym], cutoff) for sym in syms
                     if sym not in book.earlier}
            pnl, pnl_problem = _session_pnl(run, book, views)
            limit = book.limit_hit_earlier or (pnl is not None and loss_limit_reached(pnl, rules.daily_loss_limit_usd))
            context = {"day_pnl": pnl, "day_pnl_problem": pnl_problem, "loss_limit_reached": limit,
                       "loss_limit_reached_earlier": book.limit_hit_earlier, "entries_barred": limit or pnl is None,
                       "cutoff": cutoff.isoformat()}
            rows = []
            for sym in syms:
                try:
                    if sym in book.earlier:
                        rows.append(_replay(run, broker, gateway, sym, book.earlier[sym], fill_timeout_seconds))
                    else:
                        rows.append(_decide(run, broker, gateway, rules, champions[sym], views[sym], book, context,
                                            fill_timeout_seconds, gates[sym]))
                except Exception as exc:  # noqa: BLE001 - journal, decide the others, then fail the run
                    failures.append(f"{sym}: {type(exc).__name__}: {exc}")
                    rows.append({"symbol": sym, "p_up": None, "decision": "ERROR", "reason": str(exc),
                                 "order": None})
            failures += [f"{v.symbol}: {v.failure}" for v in views.values() if v.failure]
        summary = {"as_of": run.as_of.isoformat(), "decisions": rows, "day_pnl": pnl, "loss_limit_reached": limit,
                   "ema_stop": stop}
        run.outcome = "; ".join(f"{r['symbol']} {r['decision']}" for r in rows)
        run.details = summary
        summary["edge_gate"] = {sym: {"open": g.open, "source": g.source, "reason": g.reason}
                                for sym, g in gates.items()}
        run.publish(_markdown(run, rows, context, stop, failures, gates), [_table_row(r) for r in rows])
        if failures:
            raise RuntimeError(f"mtf-signal {run.as_of.isoformat()}: " + "; ".join(failures))
        return summary


def _champions(run: FlowRun, syms: list[str], stop: dict[str, Any]) -> dict[str, Champion]:
    """The MTF champions; when one is unusable the run fails saying so, and what the EMA stop's second line
    (already run) did."""
    try:
        return load_champions(run, syms)
    except ModelUnavailableError as exc:
        said = f"EMA stop second line (ran first): {stop.get('action')}: {stop.get('reason')}"
        run.details = {"ema_stop": stop}
        run.publish(f"### mtf-signal {run.as_of.isoformat()}\n\n{exc}\n\n{said}\n")
        raise ModelUnavailableError(f"{exc}. {said}") from None


def _second_line(run: FlowRun, broker, failures: list[str]) -> dict[str, Any]:
    try:
        return ema_stop_second_line(run, broker)
    except OrderBlockedError as exc:
        return {"action": "blocked", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001 - the MTF decisions still run; the run fails at the end
        failures.append(f"EMA stop second line: {type(exc).__name__}: {exc}")
        return {"action": "error", "reason": str(exc)}


def _session_pnl(run: FlowRun, book: BookState, views: dict[str, SymbolView]) -> tuple[float | None, str | None]:
    marks = {s: v.mark for s, v in views.items() if v.mark}
    closes = {s: v.previous_close for s, v in views.items() if v.previous_close}
    try:
        return day_pnl(book.all_fills(), run.session.open, marks, closes), None
    except ValueError as exc:
        return None, f"the session's P&L is unknown ({exc}): no entry in this run"


def _decide(run: FlowRun, broker, gateway, rules: MtfRules, champion: Champion, view: SymbolView,
            book: BookState, context: dict[str, Any], fill_timeout: float, gate: GateStatus) -> dict[str, Any]:
    sym = view.symbol
    qty, entry = book.position(sym)
    at_broker = book.broker_positions.get(sym, 0.0)
    blocked = None
    if sym in book.breaks:
        blocked = book.breaks[sym]
    elif book.working.get(sym):
        blocked = f"order(s) {', '.join(book.working[sym])} of this strategy still working at the broker"
    elif round(at_broker) != qty:
        blocked = (f"the broker holds {at_broker:g} {sym} shares but the journal's MTF fills add up to {qty}: "
                   "no order until reconciliation settles it")
    runs = runs_held(entry, run.as_of, runs_sessions(entry, run.as_of)) if qty > 0 and entry else None
    decision = decide(qty, runs, view.p_up, view.price, context["entries_barred"], rules,
                      market_open=run.as_of < run.session.close, blocked=blocked,
                      no_probability=view.problem or "no P(up)", no_price=view.price_problem or "no usable price",
                      loss_limit_reason=None if context["loss_limit_reached"] else context["day_pnl_problem"],
                      entry_barred=None if gate.open else gate.reason)
    margin: dict[str, Any] = {}
    if decision.action == "BUY":  # the funds check: IB's what-if of the entry, sized to what margin allows
        fit = fit_entry(broker, sym, decision.quantity, mtf_order_ref(sym, run.as_of, decision) or "")
        margin = fit.record
        if fit.capped:
            decision = dataclasses.replace(decision, quantity=fit.shares, reason=f"{decision.reason}; {fit.reason}")
        if fit.shares == 0:
            decision = MtfDecision("NO_TRADE", 0, "margin", decision.reason)
    ref = mtf_order_ref(sym, run.as_of, decision)
    halted = run.kill_switch.current() if ref else None
    if halted is not None:
        decision = dataclasses.replace(decision, reason=f"{decision.reason}; not sent: {halted.describe()}")
    inputs = {"model": champion.journal_id, **view_inputs(view), "position": qty, "broker_position": at_broker,
              "entry_time": entry.isoformat() if entry else None, "runs_held": runs, "blocked": blocked,
              "code": decision.code, "market_open": run.as_of < run.session.close, **context,
              "edge_gate": {"open": gate.open, "source": gate.source, "reason": gate.reason},
              "rules": dataclasses.asdict(rules), **margin}
    journal_decision(run, sym, decision, view, inputs, ref)
    order = None
    if ref and halted is None:
        order = send_order(run, broker, gateway, sym, decision.action, decision.quantity, ref, fill_timeout)
    return {"symbol": sym, "model": champion.journal_id, "p_up": view.p_up, "decision": decision.action,
            "quantity": decision.quantity, "reason": decision.reason, "order_ref": ref if order else None,
            "order": order}


def _replay(run: FlowRun, broker, gateway, sym: str, earlier: dict, fill_timeout: float) -> dict[str, Any]:
    order = None
    if earlier["decision"] in ("BUY", "SELL") and earlier["order_ref"]:
        order = send_order(run, broker, gateway, sym, earlier["decision"], int(earlier["quantity"]),
                           earlier["order_ref"], fill_timeout)
    return {"symbol": sym, "p_up": earlier["p_up"], "decision": earlier["decision"],
            "quantity": int(earlier["quantity"] or 0), "reason": f"rerun: decided before for this as_of: "
                                                                  f"{earlier['reason']}",
            "order_ref": earlier["order_ref"], "order": order, "rerun": True}


def _table_row(r: dict[str, Any]) -> dict[str, Any]:
    order = r.get("order") or {}
    p = r.get("p_up")
    return {"symbol": r["symbol"], "P(up)": None if p is None else round(p, 4), "decision": r["decision"],
            "reason": r["reason"],
            "order": f"{r['order_ref']} {order.get('status', '')} {order.get('note', '')}".strip()
            if r.get("order_ref") else ""}


def _markdown(run: FlowRun, rows: list[dict], context: dict, stop: dict, failures: list[str],
              gates: dict[str, GateStatus]) -> str:
    pnl = context["day_pnl"]
    lines = [f"### mtf-signal {run.as_of.isoformat()}", "",
             "| symbol | P(up) | decision | reason | order |", "|---|---|---|---|---|"]
    for r in map(_table_row, rows):
        p = "-" if r["P(up)"] is None else f"{r['P(up)']:.3f}"
        lines.append(f"| {r['symbol']} | {p} | {r['decision']} | {r['reason']} | {r['order']} |")
    lines += ["", f"Session P&L (MTF): {'unknown' if pnl is None else f'{pnl:,.2f} USD'}; daily loss limit "
                  f"{'reached: no new entries today' if context['loss_limit_reached'] else 'not reached'}.",
              f"EMA stop second line: {stop.get('action')}: {stop.get('reason')}", "",
              "Edge gate: " + "; ".join(f"{sym} {'open' if g.open else 'CLOSED, no entry is sent'} ({g.reason})"
                                        for sym, g in gates.items())]
    if failures:
        lines += ["", "**Failures:** " + "; ".join(failures)]
    return "\n".join(lines) + "\n"
