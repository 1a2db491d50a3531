"""The MTF LSTM strategy's decision rules as pure functions (strategies.md, "Decisions, each 5-minute run").

One function, :func:`decide`, takes what a run observed and returns BUY / SELL / HOLD / NO_TRADE with a reason.
The live flow (`flows/mtf_signal.py`) and the backtest on hourly bars (`models.evaluate.simulate_rules`) both call
it, so the rules exist once. Nothing here reads the clock, does I/O or imports Prefect.

The rules, per symbol (defaults from `core.settings`, `TRADEFLOW_MTF_*`):

- **entry**: flat and P(up) >= 0.52: buy ``floor(10,000 USD / price)`` shares.
- **exit**: long and (held >= 24 runs, or held >= 2 runs and P(up) < 0.50): sell the whole position.
- **daily loss limit**: once the strategy's P&L for the session (realized + unrealized, all its symbols,
  commissions included) is at or below -2,000 USD, no new entries for the rest of that session (the limit
  latches: a later recovery does not lift it); exits still run.
- **edge gate**: when the model has not shown an edge (``entry_barred``, :mod:`models.gate`), an entry the rules
  would make becomes NO_TRADE with code ``edge_gate`` and says what the rules would have bought; exits still run.
- one decision per run and symbol: a run either manages a position or enters, never both.
- something that makes the position or the state half-known (an order of the strategy still working at the
  broker, broker and journal disagreeing on the shares) blocks every order for the symbol: NO_TRADE / HOLD with
  that reason.
- when the session has closed (the run at the close), no order is sent: a market order would wait for the next
  open. A position due to exit then exits at the next session's first run.
- without a usable P(up) (bad or stale bars, too little history) there is no entry and no threshold exit; the
  maximum-hold exit still runs, since it depends on time only.

**Runs held** (:func:`runs_held`): the number of scheduled `mtf-signal` run times (the 5-minute bar ends of each
session, 09:35 … close, `core.calendar.Session.bar_ends`) that are strictly after the entry fill's time and at or
before the run's `as_of`. It is computed from the journal's entry fill time and the calendar, never by counting
runs that happened: a rerun of the same `as_of` gets the same count, and a missed run still counts, because time
passed. An entry filled at 10:05:00 has held 1 run at 10:10, 2 at 10:15 (the earliest threshold exit) and 24 at
12:05 (the maximum-hold exit). Runs only exist in sessions: a position carried overnight continues its count at
the next session's 09:35.

Which hourly bars are complete and fresh enough is :mod:`core.bar_store`'s (``complete_bars``, ``bars_problem``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from core.validation import require_finite, require_positive

if TYPE_CHECKING:  # pragma: no cover
    from core.calendar import Session
    from core.settings import Settings

__all__ = [
    "Fill",
    "MtfDecision",
    "MtfRules",
    "day_pnl",
    "decide",
    "loss_limit_reached",
    "open_position",
    "runs_held",
]



@dataclass(frozen=True)
class MtfRules:
    """The rule parameters (defaults: strategies.md and `core.settings` `mtf_*`).

    Attributes:
        entry_threshold: enter when flat and P(up) >= this (probability, 0..1).
        exit_threshold: exit when P(up) < this, once held `min_hold_runs` runs.
        min_hold_runs: 5-minute runs a position is held before a threshold exit.
        max_hold_runs: 5-minute runs after which a position exits whatever P(up) says.
        position_usd: the money one entry buys, USD.
        daily_loss_limit_usd: no new entries once the session's P&L is at or below minus this, USD (> 0).
    """

    entry_threshold: float = 0.52
    exit_threshold: float = 0.50
    min_hold_runs: int = 2
    max_hold_runs: int = 24
    position_usd: float = 10_000.0
    daily_loss_limit_usd: float = 2_000.0

    @classmethod
    def from_settings(cls, s: "Settings") -> "MtfRules":
        """The rules of the settings (TRADEFLOW_MTF_*)."""
        return cls(entry_threshold=s.mtf_entry_threshold, exit_threshold=s.mtf_exit_threshold,
                   min_hold_runs=s.mtf_min_hold_runs, max_hold_runs=s.mtf_max_hold_runs,
                   position_usd=s.mtf_position_usd, daily_loss_limit_usd=s.mtf_daily_loss_limit_usd)


@dataclass(frozen=True)
class MtfDecision:
    """What to do for one symbol in one run.

    Attributes:
        action: 'BUY', 'SELL', 'HOLD' (long, keep it) or 'NO_TRADE' (flat, stay flat).
        quantity: shares to buy or sell (0 for HOLD / NO_TRADE).
        code: a short machine-readable cause: 'entry', 'max_hold', 'exit_threshold', 'min_hold', 'hold',
            'below_entry', 'loss_limit', 'no_probability', 'no_price', 'too_small', 'blocked', 'closed', 'short',
            'edge_gate', 'margin' (flows/mtf_signal.py: IB's what-if leaves no share to buy).
        reason: one sentence with the numbers that decided.
    """

    action: str
    quantity: int
    code: str
    reason: str

    @property
    def intent(self) -> str | None:
        """The order intent ('entry' / 'exit') of a BUY / SELL, else None."""
        return {"BUY": "entry", "SELL": "exit"}.get(self.action)


def loss_limit_reached(day_pnl_usd: float, limit_usd: float, hit_earlier: bool = False) -> bool:
    """True when the daily loss limit bars new entries for the rest of the session: it was reached earlier in
    the session (it latches), or the session's P&L (USD) is at or below ``-limit_usd`` now.

    (A flow that cannot compute the P&L holds entries back for that run only: see flows/mtf_signal.py.)

    Raises:
        ValueError: ``limit_usd`` not > 0, or a P&L that is not a finite number.
    """
    require_positive("daily_loss_limit_usd", limit_usd)
    return hit_earlier or require_finite("day_pnl_usd", day_pnl_usd) <= -limit_usd


def decide(position: int, runs: int | None, p_up: float | None, price: float | None, loss_limit: bool,
           rules: MtfRules = MtfRules(), *, market_open: bool = True, blocked: str | None = None,
           no_probability: str = "no P(up)", no_price: str = "no usable price",
           loss_limit_reason: str | None = None, entry_barred: str | None = None) -> MtfDecision:
    """The decision for one symbol in one run (rules in the module docstring).

    Args:
        position: shares the strategy holds in the symbol (0 flat, > 0 long; < 0 is not this strategy's).
        runs: runs held (:func:`runs_held`) when long; ignored when flat.
        p_up: the model's P(up) for the last complete bar, or None when there is none (then ``no_probability``
            says why).
        price: the price an entry would be sized from (USD a share, a live quote), or None when there is none
            usable (``no_price`` says why).
        loss_limit: whether entries are barred (:func:`loss_limit_reached`, or the P&L is unknown); exits run.
        market_open: False at or after the session's close: no order is sent.
        blocked: a reason that forbids any order for the symbol now (working order, position mismatch).
        no_probability, no_price, loss_limit_reason: the reasons to journal when there is no P(up), no usable
            price, or the loss limit bars an entry (defaults say it generically).
        entry_barred: why no entry may be sent at all (the edge gate is closed), or None; exits are unaffected.

    Raises:
        ValueError: a NaN or out-of-range P(up), a non-positive price, or a long position without ``runs``.
    """
    if p_up is not None:
        p_up = require_finite("p_up", p_up)
        if not 0.0 <= p_up <= 1.0:
            raise ValueError(f"p_up must be a probability in [0, 1], got {p_up!r}")
    if price is not None:
        price = require_positive("price", price)
    if position < 0:
        return MtfDecision("NO_TRADE", 0, "short", f"short {-position} shares: not a position this strategy opens; "
                                                     "no order")
    long = position > 0
    idle = "HOLD" if long else "NO_TRADE"
    if blocked:
        return MtfDecision(idle, 0, "blocked", blocked)
    if not market_open:
        return MtfDecision(idle, 0, "closed", "the session has closed: a market order would wait for the next "
                                              "open, so none is sent")
    if long:
        if runs is None:
            raise ValueError("runs held is required for a long position")
        if runs >= rules.max_hold_runs:
            return MtfDecision("SELL", position, "max_hold",
                               f"held {runs} runs >= {rules.max_hold_runs} (maximum hold): sell {position}")
        if p_up is None:
            return MtfDecision("HOLD", 0, "no_probability",
                               f"held {runs} runs; {no_probability}: only the maximum hold can exit")
        if runs < rules.min_hold_runs:
            return MtfDecision("HOLD", 0, "min_hold", f"held {runs} runs < {rules.min_hold_runs} (minimum hold); "
                                                      f"P(up) {p_up:.3f}")
        if p_up < rules.exit_threshold:
            return MtfDecision("SELL", position, "exit_threshold",
                               f"P(up) {p_up:.3f} < {rules.exit_threshold:.2f} after {runs} runs: sell {position}")
        return MtfDecision("HOLD", 0, "hold", f"P(up) {p_up:.3f} >= {rules.exit_threshold:.2f}; held {runs} of "
                                              f"{rules.max_hold_runs} runs")
    if p_up is None:
        return MtfDecision("NO_TRADE", 0, "no_probability", no_probability)
    if loss_limit:
        why = loss_limit_reason or (f"daily loss limit: the session's P&L is at or below "
                                    f"-{rules.daily_loss_limit_usd:,.0f} USD; no new entries today")
        return MtfDecision("NO_TRADE", 0, "loss_limit", f"{why} (P(up) {p_up:.3f})")
    if p_up < rules.entry_threshold:
        return MtfDecision("NO_TRADE", 0, "below_entry", f"P(up) {p_up:.3f} < {rules.entry_threshold:.2f}")
    if price is None:
        return MtfDecision("NO_TRADE", 0, "no_price", f"P(up) {p_up:.3f} >= {rules.entry_threshold:.2f} but "
                                                      f"{no_price}")
    qty = math.floor(rules.position_usd / price)
    if qty <= 0:
        return MtfDecision("NO_TRADE", 0, "too_small", f"{rules.position_usd:,.0f} USD buys no share at {price:.2f}")
    why = f"P(up) {p_up:.3f} >= {rules.entry_threshold:.2f}: buy floor({rules.position_usd:,.0f} / {price:.2f}) = {qty}"
    if entry_barred:
        return MtfDecision("NO_TRADE", 0, "edge_gate", f"{entry_barred}; the rules would buy {qty} ({why}); no order")
    return MtfDecision("BUY", qty, "entry", why)


# --------------------------------------------------------------------------------------------------------------
# runs held, position and P&L from fills


def runs_held(entry_time: datetime, as_of: datetime, sessions: Iterable["Session"]) -> int:
    """Scheduled 5-minute runs strictly after ``entry_time`` and at or before ``as_of`` (module docstring).

    Args:
        entry_time: the entry fill's time (aware). as_of: the run's time (aware).
        sessions: the NYSE sessions covering entry_time's date through as_of's date (`core.calendar.sessions`).

    Raises:
        ValueError: a naive datetime.
    """
    _aware(entry_time, "entry_time")
    _aware(as_of, "as_of")
    return sum(1 for s in sessions for t in s.bar_ends() if entry_time < t <= as_of)


@dataclass(frozen=True)
class Fill:
    """One execution of the strategy: ``shares`` signed (> 0 bought, < 0 sold), ``price`` USD a share,
    ``commission`` USD (>= 0), ``time`` aware."""

    symbol: str
    shares: float
    price: float
    commission: float
    time: datetime


def open_position(fills: Sequence[Fill]) -> tuple[int, datetime | None]:
    """(shares held, time of the fill that opened the current position) from one symbol's fills.

    The entry time is the first fill after the last moment the position was flat (None when flat).
    """
    qty = 0.0
    entry: datetime | None = None
    for f in sorted(fills, key=lambda f: f.time):
        if qty == 0 and f.shares != 0:
            entry = f.time
        qty += f.shares
        if qty == 0:
            entry = None
    return int(round(qty)), entry


def day_pnl(fills: Sequence[Fill], day_start: datetime, marks: dict[str, float],
            previous_closes: dict[str, float]) -> float:
    """The strategy's P&L for the session that starts at ``day_start`` (USD): realized + unrealized, less the
    session's commissions.

    ``sum over symbols (q_now * mark - q_start * previous_close) - sum over the session's fills (shares * price
    + commission)``, where q_start are the shares held at ``day_start`` (fills before it) and q_now after all
    fills given.

    Args:
        fills: the strategy's fills (all symbols, any dates up to the run).
        day_start: the session's open (aware); fills at or after it are the session's.
        marks: current price per symbol, USD (needed for every symbol held now).
        previous_closes: the previous session's close per symbol, USD (needed for every symbol held at the open).

    Raises:
        ValueError: a price needed is missing or not a finite number > 0 (the message names the symbol).
    """
    _aware(day_start, "day_start")
    start_qty: dict[str, float] = {}
    now_qty: dict[str, float] = {}
    cash = 0.0
    for f in fills:
        now_qty[f.symbol] = now_qty.get(f.symbol, 0.0) + f.shares
        if f.time < day_start:
            start_qty[f.symbol] = start_qty.get(f.symbol, 0.0) + f.shares
        else:
            cash -= f.shares * f.price + (f.commission or 0.0)
    value = 0.0
    for sym in sorted(set(now_qty) | set(start_qty)):
        q_now, q_start = round(now_qty.get(sym, 0.0)), round(start_qty.get(sym, 0.0))
        if q_now:
            if sym not in marks:
                raise ValueError(f"no current price for {sym} (held {q_now:g} shares)")
            value += q_now * require_positive(f"current price of {sym}", marks[sym])
        if q_start:
            if sym not in previous_closes:
                raise ValueError(f"no previous close for {sym} (held {q_start:g} shares at the open)")
            value -= q_start * require_positive(f"previous close of {sym}", previous_closes[sym])
    return value + cash


def _aware(t: datetime, name: str) -> datetime:
    if not isinstance(t, datetime) or t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {t!r}")
    return t
