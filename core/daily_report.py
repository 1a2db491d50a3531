"""The daily report (one notification after the evening reconciliation) and the per-fill notices, as text.

A good day sends something, so silence can be told apart from death. The report of a session says, in USD:
the P&L per strategy and for the account (net = realized + change in unrealized - commissions, as `daily_pnl`;
realized and commissions beside it), the equity change (end-of-day NetLiquidation against the previous
session's), the open positions at the close, the day's orders and fills, the breaks, and where the
reconciliation's artifact is in the Prefect UI.
"""

from __future__ import annotations

from typing import Any

from core.reconcile import ACCOUNT, Reconciliation


def _usd(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+,.2f}"


def daily_report(result: Reconciliation, link: str | None = None) -> tuple[str, str]:
    """(subject, body) of the report of `result`'s session; `link` is the reconciliation artifact's UI URL."""
    day = result.day
    verdict = "BREAKS" if result.plan.open_breaks else "ok"
    net = result.pnl.get(ACCOUNT).net if result.pnl and ACCOUNT in result.pnl else None
    subject = f"tradeflow: daily report {day}: P&L {_usd(net)} USD, {len(result.trades)} fill(s), {verdict}"
    lines = [f"Session {day}, account {result.broker.account}"]
    if result.pnl:
        lines.append("P&L, USD (net = realized + change in unrealized - commissions):")
        for name, p in sorted(result.pnl.items(), key=lambda kv: (kv[0] == ACCOUNT, kv[0])):
            lines.append(f"  {name:<10} net {_usd(p.net)}  realized {_usd(p.realized)}  commissions "
                         f"{p.commissions:,.2f}  fills {p.fills}")
    else:
        lines.append(f"P&L: not computed ({result.pnl_note or 'no session'})")
    change = (None if result.end_equity is None or result.previous_equity is None
              else result.end_equity - result.previous_equity)
    lines.append(f"Equity (NetLiquidation): {result.end_equity:,.2f} USD, change {_usd(change)}"
                 if result.end_equity is not None else "Equity: not recorded")
    held = [(s, sym, h) for s, p in (result.pnl or {}).items() if s != ACCOUNT for sym, h in p.holdings.items()
            if h.quantity]
    lines.append("Open positions: " + (", ".join(f"{sym} {h.quantity:g} ({s}, mark {h.mark:.2f})"
                                                  for s, sym, h in held) or "none"))
    lines.append(f"Orders: {len(result.orders)}; fills: {len(result.trades)}")
    lines.append("Breaks: " + (", ".join(sorted(result.plan.open_breaks)) + " (orders for them are blocked)"
                               if result.plan.open_breaks else "none"))
    if link:
        lines.append(f"Reconciliation: {link}")
    return subject, "\n".join(lines) + "\n"


def fill_notice(trade: dict[str, Any]) -> tuple[str, str]:
    """(subject, body) of one fill (a row of `Reconciliation.trades`: symbol, side, shares, price, commission,
    strategy, order_ref, exec_time)."""
    subject = (f"tradeflow: fill {trade.get('side')} {trade.get('shares'):g} {trade.get('symbol')} @ "
               f"{trade.get('price')}")
    body = "\n".join(f"{k}: {trade.get(k)}" for k in ("exec_time", "strategy", "symbol", "side", "shares", "price",
                                                       "commission", "order_ref", "exec_id") if k in trade) + "\n"
    return subject, body
