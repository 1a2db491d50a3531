"""Where the system stands now, on one screen: `tradeflow status` (and the pre-open check's morning artifact).

`build_status(...)` reads the journal's read snapshot, the halt file, the calendar and the settings into a typed
`Status`; `render(status, markdown)` is its one renderer (terminal text, or markdown for a Prefect artifact).
What only the Prefect API knows (whether a worker polls the work pool) is handed in by the caller as plain
values, so this module needs no Prefect.

Sections, in order: the kill switch; open position breaks; positions with their P&L (marked at the latest price
a decision saw) and the latest session's P&L per strategy; today's day-start equity E0 and the EMA stop price;
the EMA state and how far it is from a cross; the VIX tier the next entry would use; each MTF champion and its
last P(up); today's session (early close?) and the next run of each deployment; the worker; the last run of each
deployment with its outcome. Amounts USD, quantities shares, times America/New_York.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from core import journal as jr
from core.calendar import DEPLOYMENTS, NY, Session, event_times, session_for, session_on, sessions
from core.controls import HaltInfo, KillSwitch
from core.reconcile_report import _table  # the one table layout of the reports (text and markdown)
from core.strategies.ema import ema_alpha, leverage_for_vix


@dataclass(frozen=True)
class PositionLine:
    """One open position of a strategy: shares, average cost and mark (USD a share), unrealized P&L (USD)."""

    strategy: str
    symbol: str
    quantity: float
    avg_cost: float | None
    mark: float | None
    mark_at: dt.datetime | None

    @property
    def unrealized(self) -> float | None:
        if self.mark is None or self.avg_cost is None:
            return None
        return (self.mark - self.avg_cost) * self.quantity


@dataclass(frozen=True)
class EmaView:
    """The last folded close's EMAs, the signal, the gap between the EMAs (fraction of the slow EMA) and the
    close at which the next session's fold would cross them (USD; None when the spans are equal)."""

    symbol: str
    session: dt.date
    close: float
    ema_fast: float
    ema_slow: float
    signal: str
    gap: float
    cross_close: float | None


@dataclass(frozen=True)
class VixTier:
    """The leverage the next EMA entry would use: from the latest VIX a decision saw (None: unknown)."""

    vix: float | None
    seen_at: dt.datetime | None
    leverage: float
    table: tuple[tuple[float, float], ...]
    default: float


@dataclass(frozen=True)
class ModelLine:
    """An MTF symbol's champion (version, None when there is none) and its last decision's P(up)."""

    symbol: str
    champion: str | None
    p_up: float | None
    p_up_at: dt.datetime | None
    decision: str | None


@dataclass(frozen=True)
class RunLine:
    """The last run of a deployment: its end event ('completed', 'failed', 'skipped'; 'started' while it runs
    or when it died), `as_of` and outcome; None fields when it never ran."""

    deployment: str
    event: str | None
    as_of: dt.datetime | None
    outcome: str | None


@dataclass
class Status:
    """Everything `tradeflow status` shows (see the module docstring)."""

    as_of: dt.datetime
    state_dir: Path
    halt: HaltInfo | None
    breaks: list[dict[str, Any]]
    positions: list[PositionLine]
    pnl_session: dt.date | None
    pnl: list[dict[str, Any]]
    session: Session | None
    next_session: Session | None
    e0: float | None
    ema_stop: dict[str, Any] | None
    ema: EmaView | None
    vix: VixTier
    models: list[ModelLine]
    next_runs: list[tuple[str, dt.datetime]]
    worker: str | None
    runs: list[RunLine] = field(default_factory=list)


def cross_close(ema_fast: float, ema_slow: float, fast_span: int, slow_span: int) -> float | None:
    """The close c at which folding it in makes the two EMAs equal (USD): fast' = a_f c + (1 - a_f) fast equals
    slow' = a_s c + (1 - a_s) slow, with a = 2 / (n + 1). A close beyond it (below, for a BULL state) turns the
    signal. None when the spans are equal."""
    a_f, a_s = ema_alpha(fast_span), ema_alpha(slow_span)
    if a_f == a_s:
        return None
    return ((1 - a_s) * ema_slow - (1 - a_f) * ema_fast) / (a_f - a_s)


def _ts(value: Any) -> dt.datetime | None:
    if value is None or (not isinstance(value, dt.datetime) and pd.isna(value)):
        return None
    return pd.Timestamp(value).to_pydatetime().astimezone(NY)


def _day(value: Any) -> dt.date | None:
    if value is None or (not isinstance(value, dt.date) and pd.isna(value)):
        return None
    return value if type(value) is dt.date else pd.Timestamp(value).date()


def _num(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def build_status(journal: jr.Journal, settings, as_of: dt.datetime, *, worker: str | None = None) -> Status:
    """The system's state at `as_of` (aware) from the journal (`journal`), the halt file and the settings'
    strategy parameters (`settings`: core.settings.Settings). `worker`: a sentence on the work pool's workers
    (the caller asks the Prefect API), None when unknown.

    Raises:
        ValueError: `as_of` is naive.
    """
    if as_of.tzinfo is None:
        raise ValueError(f"as_of {as_of.isoformat()} has no timezone")
    as_of = as_of.astimezone(NY)
    journal.ensure()
    today = session_for(as_of) or session_on(as_of.date())
    later = sessions(as_of.date() + dt.timedelta(days=1), as_of.date() + dt.timedelta(days=10))
    following = later[0] if later else None

    breaks = [{**b, "detected_session": _day(b["detected_session"])}
              for b in jr.status_open_breaks(journal).to_dict("records")]
    positions = [PositionLine(r.strategy, r.symbol, float(r.quantity), _num(r.avg_cost), _num(r.mark),
                              _ts(r.mark_at)) for r in jr.status_positions(journal).itertuples()]
    pnl_rows = jr.status_last_daily_pnl(journal)
    pnl_session = _day(pnl_rows["session"].iloc[0]) if len(pnl_rows) else None

    symbol = settings.ema_symbol.upper()
    e0 = jr.status_day_start_equity(journal, today.date) if today else None
    stops = jr.status_working_stops(journal, "ema", symbol)
    ema_stop = None if stops.empty else {"order_ref": stops["order_ref"].iloc[0],
                                         "quantity": float(stops["quantity"].iloc[0]),
                                         "stop_price": _num(stops["stop_price"].iloc[0]),
                                         "status": stops["status"].iloc[0]}
    state = jr.status_latest_ema_state(journal, symbol)
    ema = None
    if len(state):
        r = state.iloc[0]
        ema = EmaView(symbol, _day(r["session"]), float(r["close"]), float(r["ema_fast"]), float(r["ema_slow"]), r["signal"],
                      float(r["ema_fast"]) / float(r["ema_slow"]) - 1.0,
                      cross_close(float(r["ema_fast"]), float(r["ema_slow"]), int(r["fast_span"]),
                                  int(r["slow_span"])))

    latest = jr.status_latest_signals(journal)
    vix, vix_at = None, None
    seen = jr.status_last_vix(journal, "ema", symbol)
    if len(seen):
        r = seen.iloc[0]
        vix = _num(r["vix_used"]) or _num(r["vix_current"]) or _num(r["vix_last_close"])
        vix_at = _ts(r["as_of"])
    table = tuple((float(b), float(lev)) for b, lev in settings.vix_leverage)
    leverage = leverage_for_vix(vix, table, settings.default_leverage) if vix else settings.default_leverage

    champs = {r.symbol: r.version for r in jr.status_champions(journal).itertuples()}
    models = []
    for sym in (s.upper() for s in settings.mtf_symbols):
        row = latest[(latest["strategy"] == "mtf") & (latest["symbol"] == sym)]
        models.append(ModelLine(sym, champs.get(sym), _num(row["probability"].iloc[0]) if len(row) else None,
                                _ts(row["as_of"].iloc[0]) if len(row) else None,
                                row["decision"].iloc[0] if len(row) else None))

    events = event_times(as_of.date(), as_of.date() + dt.timedelta(days=40),
                         entry_minutes_before_close=settings.ema_entry_minutes_before_close)
    next_runs: dict[str, dt.datetime] = {}
    for e in events:
        if e.time > as_of and e.deployment not in next_runs:
            next_runs[e.deployment] = e.time

    last = {r.deployment: r for r in jr.status_last_runs(journal).itertuples()}
    names = list(DEPLOYMENTS) + sorted(set(last) - set(DEPLOYMENTS))
    runs = [RunLine(d, last[d].event, _ts(last[d].as_of), last[d].outcome if isinstance(last[d].outcome, str)
                    else None) if d in last else RunLine(d, None, None, None) for d in names]
    return Status(as_of=as_of, state_dir=Path(settings.state_dir), halt=KillSwitch(settings.state_dir).current(),
                  breaks=breaks, positions=positions, pnl_session=pnl_session, pnl=pnl_rows.to_dict("records"),
                  session=today, next_session=following, e0=e0, ema_stop=ema_stop, ema=ema,
                  vix=VixTier(vix, vix_at, leverage, table, float(settings.default_leverage)), models=models,
                  next_runs=sorted(((d, t) for d, t in next_runs.items()), key=lambda x: x[1]), worker=worker,
                  runs=runs)


# --- the renderer ----------------------------------------------------------------------------------------------

def _usd(x: float | None, signed: bool = False) -> str:
    return "-" if x is None else (f"{x:+,.2f}" if signed else f"{x:,.2f}")


def _when(t: dt.datetime | None) -> str:
    return "-" if t is None else f"{t.astimezone(NY):%Y-%m-%d %H:%M}"


def headline(s: Status) -> str:
    """One sentence: halted or not, breaks, positions, the EMA signal."""
    parts = [f"HALTED ({s.halt.reason})" if s.halt else "trading allowed"]
    if s.breaks:
        parts.append(f"{len(s.breaks)} open position break(s) blocking {', '.join(b['symbol'] for b in s.breaks)}")
    held = [f"{p.quantity:g} {p.symbol}" for p in s.positions]
    parts.append(f"holding {', '.join(held)}" if held else "flat")
    if s.ema:
        parts.append(f"EMA {s.ema.signal}")
    failed = [r.deployment for r in s.runs if r.event == "failed"]
    if failed:
        parts.append(f"last run failed: {', '.join(failed)}")
    return "; ".join(parts) + "."


def sections(s: Status, markdown: bool = False) -> list[tuple[str, str]]:
    """(title, body) of each section, in the order of the module docstring."""
    out: list[tuple[str, str]] = []
    out.append(("Kill switch", (f"HALTED: {s.halt.describe()}; `tradeflow resume --reason ...` lifts it"
                                if s.halt else "not halted: orders are allowed") + f" (state dir {s.state_dir})"))
    out.append(("Position breaks", _table(("symbol", "since", "broker", "journal"), [
        (b["symbol"], b["detected_session"], f"{b['broker_quantity']:g}", f"{b['journal_quantity']:g}")
        for b in s.breaks], markdown) + "\n  orders for these symbols are refused until `tradeflow resolve`"
        if s.breaks else "none"))
    pos = _table(("strategy", "symbol", "shares", "avg cost", "mark", "marked at", "unrealized P&L"), [
        (p.strategy, p.symbol, f"{p.quantity:g}", _usd(p.avg_cost), _usd(p.mark), _when(p.mark_at),
         _usd(p.unrealized, True)) for p in s.positions], markdown) if s.positions else "flat (the journal's fills)"
    if s.pnl:
        pos += ("\n\n" if markdown else "\n") + f"P&L of {s.pnl_session} (reconciliation):\n" + ("\n" if markdown
                                                                                                else "") + _table(
            ("strategy", "realized", "unrealized", "commissions", "net", "end equity"), [
                (r["strategy"], _usd(r["realized_pnl"], True), _usd(r["unrealized_pnl"], True),
                 _usd(r["commissions"]), _usd(r["net_pnl"], True), _usd(_num(r["end_equity"])))
                for r in s.pnl], markdown)
    out.append(("Positions", pos))
    if s.session is None:
        today = f"{s.as_of:%Y-%m-%d} is not an NYSE session"
    else:
        today = (f"E0 (day-start NetLiquidation) {_usd(s.e0)} USD" if s.e0 is not None else
                 f"no day-start equity recorded for {s.session.date} yet (equity-snapshot at the open)")
    stop = s.ema_stop
    today += ("; EMA stop " + (f"STP SELL {stop['quantity']:g} at {_usd(stop['stop_price'])} "
                               f"({stop['order_ref']}, {stop['status']})" if stop else "none working"))
    out.append(("Day-start equity and stop", today))
    if s.ema is None:
        out.append(("EMA state", "no EMA state in the journal yet (the first ema-entry or ema-update builds it)"))
    else:
        e = s.ema
        turn = "BEAR" if e.signal == "BULL" else "BULL"
        side = "below" if e.signal == "BULL" else "above"
        if e.cross_close is None:
            cross = ""
        elif e.cross_close <= 0:
            cross = f"; no single close can turn it {turn} (the EMAs are too far apart)"
        else:
            cross = (f"; a close {side} {e.cross_close:.2f} turns it {turn} "
                     f"({e.cross_close / e.close - 1:+.1%} from the last close)")
        out.append(("EMA state", f"{e.symbol} {e.signal} after {e.session}: close {e.close:.2f}, EMA fast "
                                 f"{e.ema_fast:.2f}, slow {e.ema_slow:.2f} (gap {e.gap:+.2%}){cross}"))
    v = s.vix
    tiers = ", ".join(f"< {b:g}: {lev:g}" for b, lev in v.table) + f", else {v.default:g}"
    out.append(("VIX tier", (f"VIX {v.vix:.2f} (seen {_when(v.seen_at)}) -> leverage {v.leverage:g}" if v.vix else
                             f"no VIX seen yet -> leverage {v.leverage:g}") + f" (tiers {tiers})"))
    out.append(("MTF models", _table(("symbol", "champion", "last P(up)", "at", "decision"), [
        (m.symbol, m.champion or "NONE (mtf-signal fails)", "-" if m.p_up is None else f"{m.p_up:.3f}",
         _when(m.p_up_at), m.decision or "-") for m in s.models], markdown)))
    if s.session is None:
        sess = f"no session on {s.as_of:%Y-%m-%d}"
    else:
        sess = (f"{s.session.date}: {s.session.open:%H:%M}-{s.session.close:%H:%M}"
                + (" (EARLY CLOSE)" if s.session.early_close else ""))
    if s.next_session is not None:
        sess += (f"; next session {s.next_session.date} {s.next_session.open:%H:%M}-{s.next_session.close:%H:%M}"
                 + (" (early close)" if s.next_session.early_close else ""))
    sess += ("\n\n" if markdown else "\n") + _table(("deployment", "next run"), [
        (d, _when(t)) for d, t in s.next_runs], markdown)
    out.append(("Session and next runs", sess))
    out.append(("Worker", s.worker or "unknown (no Prefect API answered)"))
    out.append(("Last runs", _table(("deployment", "outcome", "as_of", "detail"), [
        (r.deployment, r.event or "never ran", _when(r.as_of), (r.outcome or "")[:90]) for r in s.runs], markdown)))
    return out


def render(s: Status, markdown: bool = False) -> str:
    """The status as terminal text (`markdown=False`) or a markdown artifact: the headline first, then each
    section."""
    if markdown:
        body = "\n\n".join(f"#### {t}\n\n{b}" for t, b in sections(s, True))
        return f"### tradeflow status {_when(s.as_of)}\n\n{headline(s)}\n\n{body}\n"
    body = "\n\n".join(f"{t}\n{b if b.startswith('  ') else '  ' + b}" for t, b in sections(s, False))
    return f"tradeflow status at {_when(s.as_of)} New York\n{headline(s)}\n\n{body}\n"
