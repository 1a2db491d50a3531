"""The reconciliation's report: text for `tradeflow reconcile` and markdown for the flow's Prefect artifact (its
equity chart: core/charts.py).

Amounts are USD, quantities shares, times New York.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.calendar import NY
from core.reconcile import ACCOUNT, Reconciliation

_COUNTS = (("executions", "execution(s) added"), ("commissions", "commission(s) filled in"),
           ("external_orders", "external order(s)"), ("order_states", "order state(s)"),
           ("order_ids", "order id(s) filled in"), ("breaks", "new break(s)"), ("daily_pnl", "daily P&L row(s)"),
           ("end_of_day_equity", "end-of-day equity"))


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], markdown: bool) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(cells[0]) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells[1:]])
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def _usd(x: float | None, signed: bool = True) -> str:
    return "" if x is None else (f"{x:+,.2f}" if signed else f"{x:,.2f}")


def _sections(result: Reconciliation, markdown: bool) -> list[tuple[str, str]]:
    plan = result.plan
    out: list[tuple[str, str]] = []
    counts = [f"{result.recorded[k]} {label}" for k, label in _COUNTS if result.recorded.get(k)]
    out.append(("Recorded", ", ".join(counts) if counts else "no repairs: the journal already agreed with the broker"))

    rows = []
    for p in plan.positions:
        if p.agrees and p.symbol not in plan.open_breaks:
            state = "ok"
        elif any(b.symbol == p.symbol for b in plan.new_breaks):
            state = "BREAK (recorded now)"
        elif p.symbol in plan.open_breaks:
            since = min(r["detected_session"] for r in plan.open_breaks[p.symbol])
            state = f"BREAK (unresolved since {since})"
        else:
            state = "BREAK (not recorded: resolved earlier today)"
        rows.append((p.symbol, f"{p.broker_quantity:g}", f"{p.journal_quantity:g}", f"{p.difference:+g}", state))
    for symbol in sorted(set(plan.open_breaks) - {p.symbol for p in plan.positions}):
        since = min(r["detected_session"] for r in plan.open_breaks[symbol])
        rows.append((symbol, "0", "0", "+0", f"agrees, but the break of {since} is unresolved"))
    out.append(("Positions (shares)", _table(("symbol", "broker", "journal", "difference", "state"), rows, markdown)
                if rows else "flat at the broker and in the journal"))

    breaks = [(symbol, r["detected_session"], f"{r['broker_quantity']:g}", f"{r['journal_quantity']:g}",
               "recorded now" if r["detected_session"] == result.day and symbol in
               {b.symbol for b in plan.new_breaks} else "unresolved")
              for symbol, rows in sorted(plan.open_breaks.items()) for r in rows]
    breaks += [(p.symbol, result.day, f"{p.broker_quantity:g}", f"{p.journal_quantity:g}",
                "NOT recorded (a break of this session was resolved already): check by hand")
               for p in plan.unrecordable]
    out.append(("Position breaks (orders for these symbols are blocked until `tradeflow resolve SYMBOL --note ...`)",
                _table(("symbol", "detected", "broker", "journal", "state"), breaks, markdown))
               if breaks else ("Position breaks", "none"))

    trades = [(t["exec_time"].astimezone(NY).strftime("%H:%M:%S"), t["symbol"], t["side"], f"{t['shares']:g}",
               f"{t['price']:.2f}", _usd(t["commission"], False), t["strategy"], t["order_ref"] or "",
               "yes" if t["external"] else "") for t in result.trades]
    out.append((f"Trades of {result.day}", _table(("time", "symbol", "side", "shares", "price", "commission",
                                                    "strategy", "order_ref", "external"), trades, markdown)
                if trades else "none"))

    if result.pnl is None:
        out.append((f"P&L of {result.day} (USD)", result.pnl_note))
    else:
        rows = [(r.strategy, _usd(r.realized), _usd(r.unrealized), _usd(r.unrealized - r.previous_unrealized),
                 _usd(r.commissions, False), _usd(r.net), r.fills)
                for name, r in result.pnl.items() if name != ACCOUNT]
        a = result.pnl[ACCOUNT]
        rows.append((ACCOUNT, _usd(a.realized), _usd(a.unrealized), _usd(a.unrealized - a.previous_unrealized),
                     _usd(a.commissions, False), _usd(a.net), a.fills))
        text = _table(("strategy", "realized", "unrealized", "unrealized change", "commissions", "net", "fills"),
                      rows, markdown)
        text += f"\n\n{result.pnl_note}" if markdown else f"\n  ({result.pnl_note})"
        out.append((f"P&L of {result.day} (USD)", text))
        if result.end_equity is not None:
            line = (f"NetLiquidation {_usd(result.end_equity, False)} USD at "
                    f"{result.broker.time.astimezone(NY):%Y-%m-%d %H:%M}")
            if result.previous_equity is not None:
                change = result.end_equity - result.previous_equity
                line += (f"; change {_usd(change)} since {_usd(result.previous_equity, False)} (the previous "
                         f"session's end, else this one's start), of which the "
                         f"strategies' P&L {_usd(a.net)} and other (interest, fees, positions outside the journal) "
                         f"{_usd(change - a.net)}")
            out.append(("Equity", line))
    if plan.warnings:
        out.append(("Warnings", "\n".join(("- " if markdown else "  - ") + w for w in plan.warnings)))
    return out


def format_text(result: Reconciliation) -> str:
    """The readable report of `tradeflow reconcile`."""
    b = result.broker
    lines = [f"Reconciliation of {result.day}: account {b.account}, broker clock {b.time.astimezone(NY).isoformat()}"]
    for title, body in _sections(result, markdown=False):
        lines += ["", f"{title}:", body if body.startswith("  ") else f"  {body}"]
    lines += ["", f"RESULT: {result.failure}" if result.failure else "RESULT: the journal agrees with the broker"]
    return "\n".join(lines) + "\n"


def format_markdown(result: Reconciliation) -> str:
    """The reconciliation flow's artifact: the same sections as the text, as markdown tables."""
    verdict = f"**{result.failure}**" if result.failure else "The journal agrees with the broker."
    parts = [f"### Reconciliation of {result.day}",
             f"Account {result.broker.account}, broker clock {result.broker.time.astimezone(NY).isoformat()}, "
             f"`as_of` {result.as_of.isoformat()}", verdict]
    for title, body in _sections(result, markdown=True):
        parts += [f"#### {title}", body]
    return "\n\n".join(parts) + "\n"
