"""Deployment `signals` (every 15 minutes of each session; strategies/signals/__init__.py): the prediction
source's signals, the rule file, brackets, reversals, limits (strategies/signals/rules.py says what the rules do).

1. The late guard: a run more than TRADEFLOW_LATE_RUN_MAX_MINUTES after its `as_of` (broker clock) does nothing
   (SkippedLate).
2. Journal what the broker did since the last run: fills of the strategy's stop-losses and take-profits, the
   final state of their OCA siblings. The run at the close stops there (a market order would wait for the next
   open).
3. The signals of the tickers as of `as_of` (HTTP, key TRADEFLOW_SIGNALS_API_KEY); a source that does not answer
   fails the run before anything is decided.
4. The strategy's P&L of the session (the journal's fills, marked at the current prices) against the
   daily loss limit: halted for the rest of the day once reached (journaled with each decision).
5. Each ticker on its own (a failure of one does not stop the others; the run then fails naming it): its position
   (the journal's fills of the strategy), its working pair (the broker's open orders), the current price, and the
   ATR of the 5-minute bars when the matching rule places ATR stops; the plan (`rules.plan_ticker`) is journaled
   with every input and its orders' refs before any order; then carried out through the one order path
   (`steps.execute`: an entry is an IB bracket sized by IB's what-if, a scale-in changes the bracket's children).
   A rerun of the same `as_of` follows the journaled plan.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from datetime import datetime
from typing import Any

from prefect import flow

from core.features import atr_wilder
from strategies.signals.rules import (Bracket, Limits, TickerState, halted_reason, load_rules, needs_atr,
                                      plan_ticker, position_from_fills, session_pnl)
from strategies.signals.settings import get_signals_settings
from strategies.signals.source import fetch_signals
from strategies.signals.steps import STRATEGY, Refs, bracket_of, execute, linked_orders, mark, sync_orders
from tasks.runtime import flow_run
from tasks.strategy_kit import completed_bars, record_decision

DEPLOYMENT = "signals"


@flow(name=DEPLOYMENT)
def signals(as_of: datetime | None = None) -> dict[str, Any] | Any:
    """One run of the signals strategy at `as_of` (aware; default: the run's scheduled start). Returns what it
    did per ticker, or the SkippedLate state of a late run."""
    cfg = get_signals_settings()
    with flow_run(DEPLOYMENT, as_of) as run:
        if run.session is None or not (run.session.open < run.as_of <= run.session.close):
            run.outcome = "outside the session: nothing to do"
            return {}
        at_close = run.as_of >= run.session.close
        rules = load_rules(cfg.rules_file.read_text())
        limits = Limits(cfg.position_usd, cfg.max_position_usd, cfg.max_positions, cfg.max_daily_loss_usd)
        with run.broker() as broker:
            late = run.refuse_if_late(broker, run.settings.late_run_max_minutes)
            if late is not None:
                return late
            gateway = run.gateway(broker)
            synced = sync_orders(gateway, broker)
            if at_close:  # a market order now would wait for the next open: journal what happened, decide nothing
                run.outcome = f"at the close: {synced} new fill(s) journaled; no decision"
                return {}
            key = cfg.api_key.get_secret_value() if cfg.api_key else None
            incoming = fetch_signals(cfg.api_url, key, cfg.symbols, run.as_of, cfg.api_timeout_seconds)
            marks = {s: mark(broker.current_price(s), s) for s in cfg.symbols}
            with run.journal.transaction() as tx:
                fills = {s: tx.strategy_fill_rows(STRATEGY, s) for s in cfg.symbols}
                today = tx.strategy_fill_rows(STRATEGY, session=run.session.date)
                earlier = tx.session_decisions(STRATEGY, run.session.date)
            positions = {s: position_from_fills(f) for s, f in fills.items()}
            pnl = session_pnl(today, marks)
            halted = halted_reason(pnl, limits, next((d["inputs"].get("halted") for d in earlier
                                                      if d["as_of"] < run.as_of and d["inputs"].get("halted")), None))
            open_orders = broker.open_orders()
            report, failed = {}, []
            for symbol in cfg.symbols:
                try:
                    report[symbol] = _ticker(run, broker, gateway, symbol, incoming.get(symbol), marks[symbol],
                                             positions, open_orders, rules, limits, halted, pnl, cfg)
                except Exception as exc:  # noqa: BLE001 - isolated: the others go on; the run fails below
                    failed.append(f"{symbol}: {type(exc).__name__}: {exc}")
                    report[symbol] = {"error": failed[-1]}
        run.details = {"pnl": round(pnl, 2), "halted": halted, "signals": {s: g.side for s, g in incoming.items()}}
        run.outcome = "; ".join(f"{s} {r.get('decision', 'failed')}" for s, r in report.items())
        run.publish(_markdown(run, report, pnl, halted), table=[{"symbol": s, **{k: str(v) for k, v in r.items()}}
                                                               for s, r in report.items()])
        if failed:
            raise RuntimeError(f"signals: {len(failed)} ticker(s) failed: " + "; ".join(failed))
        return report


def _ticker(run, broker, gateway, symbol, signal, price, positions, open_orders, rules, limits, halted, pnl, cfg):
    """Decide (or follow the journaled decision of this as_of) and act for one ticker."""
    with run.journal.transaction() as tx:
        journaled = tx.decision(STRATEGY, symbol, run.as_of)
    rerun = journaled is not None
    if journaled is None:
        position, avg_cost = positions[symbol]
        atr = math.nan
        if needs_atr(signal, rules):  # one historical request, only when a rule places ATR stops (IB pacing)
            bars = completed_bars(broker, symbol, run.as_of, duration="2 D")
            atr = float(atr_wilder(bars["high"], bars["low"], bars["close"], cfg.atr_bars).iloc[-1])
        state = TickerState(symbol, position, avg_cost, price, atr, bracket_of(symbol, open_orders))
        plan = plan_ticker(state, signal, rules, limits, open_positions=sum(1 for q, _ in positions.values() if q),
                           halted=halted)
        links = linked_orders(plan.steps, Refs.of(symbol, run.as_of), state.bracket)
        inputs = {**plan.inputs, "plan": plan.as_record(), "orders": links, "session_pnl": round(pnl, 2),
                  "limits": asdict(limits)}
        first = next((v for v in links.values() if isinstance(v, str)), None)
        record_decision(run, STRATEGY, symbol, plan.decision, plan.reason, signal=signal.side if signal else None,
                        probability=signal.confidence if signal else None, price=state.price,
                        quantity=sum(s.quantity for s in plan.steps if s.kind != "resize") or None,
                        order_ref=first, inputs=inputs)
        journaled = {"decision": plan.decision, "reason": plan.reason, "inputs": inputs}
    inputs = journaled["inputs"]
    pair = Bracket(**inputs["bracket"]) if inputs.get("bracket") else None
    done = execute(run, broker, gateway, symbol, inputs["plan"]["steps"], int(inputs["position"]), pair,
                   cfg.fill_timeout_seconds, rerun)
    return {"decision": journaled["decision"], "reason": journaled["reason"], "done": done}


def _markdown(run, report: dict[str, Any], pnl: float, halted: str | None) -> str:
    lines = [f"### signals {run.as_of:%Y-%m-%d %H:%M}", "", f"session P&L {pnl:.2f} USD"
             + (f"; **halted**: {halted}" if halted else ""), "", "| ticker | decision | reason | done |",
             "|---|---|---|---|"]
    for symbol, r in report.items():
        lines.append(f"| {symbol} | {r.get('decision', 'failed')} | {r.get('reason', r.get('error', ''))} | "
                     f"{'<br>'.join(r.get('done', []))} |")
    return "\n".join(lines) + "\n"
