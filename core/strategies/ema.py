"""EMA 25/125 on SMH with VIX-scaled leverage and a daily equity stop: the rules as pure functions.

Source of every rule: shared/reference/strategies.md, section "EMA 25/125 on SMH" (this module quotes it where
it matters). Nothing here reads the clock, does I/O or imports Prefect: the flows pass in what they observed
(prices, equity, VIX) and journal the returned objects, and the backtest (`core.backtest.ema`) calls the very
same functions on daily bars.

Units and conventions:
- prices in USD a share; equity, NetLiquidation and available funds in USD; quantities in whole shares;
- fractions are fractions (0.02 = 2 %), never percent;
- a *session* is an NYSE trading day, given as a `datetime.date` (the session's date in America/New_York);
- the EMAs are over daily *official closes*; "final" EMAs include the session's close, "provisional" EMAs take
  one step from the last final EMAs with a live price standing in for today's close.

The daily cycle these functions serve (times America/New_York, 15:55/16:00 become 12:55/13:00 on early closes):

1. 09:30 day start: record E0 = NetLiquidation; with a position of q shares arm the stop at
   :func:`stop_price` (P_ref = the SMH price at the time E0 was recorded).
2. During the session: :func:`daily_stop_hit` on every check; exit the whole position when it is hit.
3. 15:55: :func:`decide_before_close` (provisional EMAs, signal, leverage, size) gives BUY / SELL / HOLD / NO_TRADE.
4. 16:00: :func:`close_update` folds the official close into the state; a final BEAR while long means
   "exit at the next session's open".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import Enum
from typing import TYPE_CHECKING, Any

from core.validation import require_finite, require_positive, require_whole_shares

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from core.settings import Settings

__all__ = [
    "Action",
    "CloseUpdate",
    "DailyClose",
    "EmaDecision",
    "EmaParams",
    "EmaState",
    "LeverageChoice",
    "Provisional",
    "Signal",
    "StopCheck",
    "VixInfo",
    "choose_leverage",
    "close_update",
    "daily_stop_hit",
    "decide_before_close",
    "ema_alpha",
    "ema_series",
    "ema_step",
    "init_ema_state",
    "leverage_for_vix",
    "next_open_exit",
    "official_close",
    "position_size",
    "provisional",
    "second_line_check",
    "signal_of",
    "stop_fill_price",
    "stop_order_price",
    "stop_price",
    "target_shares",
]

DEFAULT_VIX_TABLE: tuple[tuple[float, float], ...] = ((12.0, 3.75), (13.0, 3.5), (14.0, 3.25))
"""(VIX upper bound, leverage), ascending: VIX < 12: 3.75; < 13: 3.5; < 14: 3.25 (strategies.md)."""


class Signal(str, Enum):
    """BULL when EMA fast > EMA slow, otherwise BEAR (equal EMAs are BEAR)."""

    BULL = "BULL"
    BEAR = "BEAR"


class Action(str, Enum):
    """What the 15:55 decision asks for.

    - BUY: provisional BULL and flat; buy `shares`.
    - SELL: provisional BEAR and long; sell the whole position (`shares` = the position).
    - HOLD: nothing to do: long and BULL, or flat and BEAR.
    - NO_TRADE: the rules want an entry (BULL and flat) but the size is 0 shares (available funds too small).
    """

    BUY = "BUY"
    SELL = "SELL"
    HOLD = "HOLD"
    NO_TRADE = "NO_TRADE"


@dataclass(frozen=True, slots=True)
class EmaParams:
    """The strategy's parameters (defaults = strategies.md = the settings' defaults).

    Attributes:
        fast, slow: EMA spans, sessions (25, 125).
        min_history: sessions of closes needed before the first decision (250).
        stop_fraction: daily equity stop as a fraction of E0 (0.02 = exit at equity <= 0.98 * E0).
        vix_table: (VIX upper bound, leverage) pairs, ascending; the first bound strictly above VIX gives L.
        default_leverage: L when VIX >= the last bound, or when no VIX value is available (3.0).
    """

    fast: int = 25
    slow: int = 125
    min_history: int = 250
    stop_fraction: float = 0.02
    vix_table: tuple[tuple[float, float], ...] = DEFAULT_VIX_TABLE
    default_leverage: float = 3.0

    def __post_init__(self) -> None:
        for name in ("fast", "slow", "min_history"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive integer number of sessions, got {v!r}")
        if self.fast >= self.slow:
            raise ValueError(f"fast span ({self.fast}) must be smaller than slow span ({self.slow})")
        if not 0 < self.stop_fraction < 1:
            raise ValueError(f"stop_fraction must be in (0, 1), got {self.stop_fraction!r}")
        require_positive("default_leverage", self.default_leverage)
        table = tuple((float(b), float(lev)) for b, lev in self.vix_table)
        bounds = [b for b, _ in table]
        if bounds != sorted(bounds) or len(set(bounds)) != len(bounds):
            raise ValueError(f"vix_table bounds must be strictly ascending, got {bounds}")
        for b, lev in table:
            require_positive("vix_table bound", b)
            require_positive("vix_table leverage", lev)
        object.__setattr__(self, "vix_table", table)

    @classmethod
    def from_settings(cls, settings: Settings) -> EmaParams:
        """The parameters held by `core.settings.Settings` (TRADEFLOW_EMA_FAST, ... environment variables)."""
        return cls(
            fast=settings.ema_fast,
            slow=settings.ema_slow,
            min_history=settings.ema_min_history,
            stop_fraction=settings.daily_stop_fraction,
            vix_table=tuple((float(b), float(lev)) for b, lev in settings.vix_leverage),
            default_leverage=settings.default_leverage,
        )


# --------------------------------------------------------------------------------------------------------------
# EMA arithmetic
# --------------------------------------------------------------------------------------------------------------


def ema_alpha(span: int) -> float:
    """The smoothing factor `a = 2 / (n + 1)` of an EMA over `span` = n sessions (n >= 1).

    Raises:
        ValueError: `span` is not a positive integer.
    """
    if isinstance(span, bool) or not isinstance(span, int) or span <= 0:
        raise ValueError(f"span must be a positive integer number of sessions, got {span!r}")
    return 2.0 / (span + 1.0)


def ema_step(prev_ema: float, close: float, span: int) -> float:
    """One EMA recursion step: `ema_t = ema_{t-1} + a * (close_t - ema_{t-1})`, `a = 2 / (span + 1)`.

    Args:
        prev_ema: the EMA after the previous session, USD (> 0).
        close: the new close (or the live price standing in for it), USD (> 0).
        span: EMA span n, sessions.

    Raises:
        ValueError: `prev_ema` or `close` is NaN, infinite or not > 0; `span` is not a positive integer.
    """
    a = ema_alpha(span)
    p = require_positive("prev_ema", prev_ema)
    c = require_positive("close", close)
    return p + a * (c - p)


def _check_closes(closes: Sequence[float]) -> list[float]:
    return [require_positive(f"close #{i}", c) for i, c in enumerate(closes)]


def ema_series(closes: Sequence[float], span: int) -> list[float]:
    """The EMA after each close, seeded with the first close: equal to pandas `ewm(span=span, adjust=False)`.

    `out[0] = closes[0]`; `out[t] = ema_step(out[t-1], closes[t], span)`. The same arithmetic as
    :meth:`EmaState.update`, so a state folded day by day equals this recomputation exactly.

    Args:
        closes: daily closes in session order, USD (each finite and > 0); at least one.

    Returns:
        A list of floats, one EMA per close.

    Raises:
        ValueError: no closes, or a close is NaN / infinite / not > 0 (the message gives its position).
    """
    values = _check_closes(closes)
    if not values:
        raise ValueError("closes must not be empty")
    a = ema_alpha(span)
    out = [values[0]]
    e = values[0]
    for c in values[1:]:
        e = e + a * (c - e)
        out.append(e)
    return out


def signal_of(ema_fast: float, ema_slow: float) -> Signal:
    """BULL when `ema_fast > ema_slow`, otherwise BEAR (strategies.md "Signal").

    Raises:
        ValueError: an EMA is NaN, infinite or not > 0.
    """
    f = require_positive("ema_fast", ema_fast)
    s = require_positive("ema_slow", ema_slow)
    return Signal.BULL if f > s else Signal.BEAR


def _as_session(name: str, value: object) -> date:
    """A session date from a `date`, a midnight `datetime`/`pd.Timestamp` or an ISO string."""
    if isinstance(value, datetime):
        if (value.hour, value.minute, value.second, value.microsecond) != (0, 0, 0, 0):
            raise ValueError(f"{name} must be a session date, got a time of day: {value!r}")
        return date(value.year, value.month, value.day)
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{name} must be an ISO date (YYYY-MM-DD), got {value!r}") from None
    raise ValueError(f"{name} must be a session date, got {value!r}")


# --------------------------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EmaState:
    """The final EMAs after the last completed session (strategies.md "State").

    Immutable: :meth:`update` returns a new state. Persist it (or the journal rows it came from) between runs.

    Attributes:
        session: the last session whose official close is folded in (America/New_York date).
        ema_fast, ema_slow: the final EMAs after that session, USD.
        count: how many daily closes have been folded in since the seed (the seed close counts as 1).
        fast_span, slow_span: the EMA spans n, sessions.
    """

    session: date
    ema_fast: float
    ema_slow: float
    count: int
    fast_span: int = 25
    slow_span: int = 125

    def __post_init__(self) -> None:
        object.__setattr__(self, "session", _as_session("session", self.session))
        object.__setattr__(self, "ema_fast", require_positive("ema_fast", self.ema_fast))
        object.__setattr__(self, "ema_slow", require_positive("ema_slow", self.ema_slow))
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise ValueError(f"count must be an integer >= 1, got {self.count!r}")
        ema_alpha(self.fast_span)
        ema_alpha(self.slow_span)

    @property
    def signal(self) -> Signal:
        """The final signal after `session`."""
        return signal_of(self.ema_fast, self.ema_slow)

    def update(self, session: date, close: float) -> EmaState:
        """Fold `session`'s official daily close into the EMAs; return the new state (self is unchanged).

        Args:
            session: the session the close belongs to; must come after `self.session`.
            close: its official close, USD (finite, > 0).

        Raises:
            ValueError: `session` is not after `self.session` ("duplicate" when equal, "out of order" when
                before), or `close` is NaN / infinite / not > 0.
        """
        s = _as_session("session", session)
        if s == self.session:
            raise ValueError(f"duplicate session {s}: its close is already folded into the EMAs")
        if s < self.session:
            raise ValueError(f"out-of-order session {s}: the EMAs already include {self.session}")
        c = require_positive("close", close)
        return EmaState(
            session=s,
            ema_fast=ema_step(self.ema_fast, c, self.fast_span),
            ema_slow=ema_step(self.ema_slow, c, self.slow_span),
            count=self.count + 1,
            fast_span=self.fast_span,
            slow_span=self.slow_span,
        )

    def as_record(self) -> dict[str, Any]:
        """The state as a flat dict (for the journal)."""
        return {
            "session": self.session,
            "ema_fast": self.ema_fast,
            "ema_slow": self.ema_slow,
            "count": self.count,
            "fast_span": self.fast_span,
            "slow_span": self.slow_span,
            "signal": self.signal.value,
        }


def init_ema_state(
    closes: pd.Series | Iterable[tuple[date, float]],
    *,
    fast: int = 25,
    slow: int = 125,
    min_history: int = 250,
) -> EmaState:
    """The state after folding a history of daily closes, seeded with the first one.

    Equal to the last row of pandas `ewm(span=n, adjust=False).mean()` over the same closes, for n = fast and slow.

    Args:
        closes: a pandas Series of official daily closes (USD) indexed by session date (`date`, midnight
            `Timestamp` or a `DatetimeIndex`), in strictly increasing session order; or an iterable of
            `(session, close)` pairs in that order.
        fast, slow: EMA spans, sessions.
        min_history: the fewest sessions accepted (strategies.md: the first decision needs at least 250).

    Raises:
        ValueError: fewer than `min_history` closes (the message gives both counts); sessions not strictly
            increasing (duplicate or out of order, naming the session); a close NaN / infinite / not > 0.
    """
    if hasattr(closes, "index") and hasattr(closes, "to_numpy"):
        pairs = list(zip(closes.index, closes.to_numpy(), strict=True))  # type: ignore[union-attr]
    else:
        pairs = list(closes)  # type: ignore[arg-type]
    if len(pairs) < min_history:
        raise ValueError(
            f"EMA history too short: {len(pairs)} sessions of closes, at least {min_history} needed "
            f"(ema_min_history) before the first decision"
        )
    first_session, first_close = pairs[0]
    seed = require_positive(f"close of {first_session}", first_close)
    state = EmaState(session=first_session, ema_fast=seed, ema_slow=seed, count=1, fast_span=fast, slow_span=slow)
    for s, c in pairs[1:]:
        try:
            state = state.update(s, c)
        except ValueError as exc:
            raise ValueError(f"EMA history, session {s}: {exc}") from None
    return state


# --------------------------------------------------------------------------------------------------------------
# Provisional step, leverage, sizing
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Provisional:
    """Provisional EMAs: one step from the last final EMAs with a live price standing in for today's close.

    Attributes: price (USD), ema_fast, ema_slow (USD), signal.
    """

    price: float
    ema_fast: float
    ema_slow: float
    signal: Signal


def provisional(state: EmaState, price: float) -> Provisional:
    """The provisional EMAs and signal for `price` (strategies.md, "Decision"); `state` is not changed.

    Raises:
        ValueError: `price` is NaN, infinite or not > 0.
    """
    p = require_positive("price", price)
    f = ema_step(state.ema_fast, p, state.fast_span)
    s = ema_step(state.ema_slow, p, state.slow_span)
    return Provisional(price=p, ema_fast=f, ema_slow=s, signal=signal_of(f, s))


def _usable_vix(value: float | None) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def leverage_for_vix(
    vix: float,
    table: Sequence[tuple[float, float]] = DEFAULT_VIX_TABLE,
    default: float = 3.0,
) -> float:
    """Leverage L for a VIX value: the first `(bound, L)` of `table` with `vix < bound`, else `default`.

    With the default table: VIX < 12: 3.75; < 13: 3.5; < 14: 3.25; otherwise 3.0 (strategies.md). VIX 12.0 gives
    3.5 (the bounds are strict).

    Raises:
        ValueError: `vix` is NaN, infinite or not > 0 (callers with a possibly missing VIX use
            :func:`choose_leverage`).
    """
    v = require_positive("vix", vix)
    for bound, lev in table:
        if v < bound:
            return float(lev)
    return float(default)


@dataclass(frozen=True, slots=True)
class VixInfo:
    """What is known of VIX at decision time.

    Attributes:
        current: the index's current value (or, in the daily backtest, the session's VIX close); None/NaN/<= 0
            when unavailable.
        last_close: its latest official daily close before now; None/NaN/<= 0 when unavailable.
        last_close_session: the session of `last_close`, for the journal (optional).
    """

    current: float | None = None
    last_close: float | None = None
    last_close_session: date | None = None


@dataclass(frozen=True, slots=True)
class LeverageChoice:
    """The leverage and why.

    Attributes:
        leverage: L, a multiple of NetLiquidation (3.0 = 300 %).
        vix_used: the VIX value L came from, or None when none was usable.
        source: "current", "last_close" or "default" (no usable VIX).
        reason: one line for the journal, e.g. "VIX 12.50 (current) < 13.0 -> L 3.5".
    """

    leverage: float
    vix_used: float | None
    source: str
    reason: str


def _bracket_text(v: float, table: Sequence[tuple[float, float]], lev: float) -> str:
    for bound, tl in table:
        if v < bound:
            return f"< {bound:g} -> L {tl:g}"
    last = table[-1][0] if table else float("nan")
    return f">= {last:g} -> L {lev:g} (default)"


def choose_leverage(
    vix: VixInfo,
    table: Sequence[tuple[float, float]] = DEFAULT_VIX_TABLE,
    default: float = 3.0,
) -> LeverageChoice:
    """Leverage from VIX with the fallbacks of strategies.md: current value, else latest daily close, else default.

    A value is unusable when it is None, NaN, infinite or not > 0. This function never raises on a missing VIX:
    it returns `default` with a reason that says what was missing.

    Raises:
        ValueError: `default` is not > 0.
    """
    default = require_positive("default_leverage", default)
    cur = _usable_vix(vix.current)
    if cur is not None:
        lev = leverage_for_vix(cur, table, default)
        return LeverageChoice(lev, cur, "current", f"VIX {cur:.2f} (current) {_bracket_text(cur, table, lev)}")
    last = _usable_vix(vix.last_close)
    if last is not None:
        lev = leverage_for_vix(last, table, default)
        when = f" of {vix.last_close_session}" if vix.last_close_session is not None else ""
        return LeverageChoice(
            lev,
            last,
            "last_close",
            f"VIX current value unavailable ({vix.current!r}); latest daily close{when} {last:.2f} "
            f"{_bracket_text(last, table, lev)}",
        )
    return LeverageChoice(
        default,
        None,
        "default",
        f"VIX unavailable (current {vix.current!r}, latest daily close {vix.last_close!r}): "
        f"default leverage L {default:g}",
    )


def target_shares(net_liquidation: float, leverage: float, price: float) -> int:
    """`floor(NetLiquidation * L / price)`: the shares the strategy wants before the funds check.

    Args:
        net_liquidation: the account's NetLiquidation, USD (> 0).
        leverage: L (> 0).
        price: SMH price, USD a share (> 0).

    Raises:
        ValueError: an input is NaN, infinite or not > 0 (naming it).
    """
    nl = require_positive("net_liquidation", net_liquidation)
    lev = require_positive("leverage", leverage)
    p = require_positive("price", price)
    return math.floor(nl * lev / p)


def position_size(net_liquidation: float, leverage: float, price: float, available_funds: float) -> int:
    """Shares to buy: `floor(NetLiquidation * L / price)`, sized DOWN (never up) to what the funds allow.

    "What the available funds allow" is `floor(available_funds / price)` shares: `available_funds` is the USD
    value of SMH the account may still buy now (for an IB margin account this is its buying power for the order,
    i.e. AvailableFunds divided by the initial-margin requirement; for a cash account it is the cash). A negative
    value (a margin deficit) allows nothing. Commissions are not deducted when sizing (at most 0.005 USD a share).

    Returns:
        Whole shares >= 0; 0 means "no order" (strategies.md).

    Raises:
        ValueError: `net_liquidation`, `leverage` or `price` is NaN / infinite / not > 0, or `available_funds` is
            NaN / infinite (each named in the message).
    """
    want = target_shares(net_liquidation, leverage, price)
    funds = require_finite("available_funds", available_funds)
    affordable = math.floor(max(funds, 0.0) / float(price))
    return max(0, min(want, affordable))


# --------------------------------------------------------------------------------------------------------------
# Daily equity stop
# --------------------------------------------------------------------------------------------------------------


def stop_price(p_ref: float, e0: float, qty: int, stop_fraction: float = 0.02) -> float:
    """The SMH price at which equity reaches `(1 - stop_fraction) * E0`: `P_stop = P_ref - f * E0 / q`.

    With one position of q shares, equity = cash + q * price, so equity <= (1 - f) * E0 exactly when the price
    falls to `P_ref - f * E0 / q`, P_ref being the SMH price when E0 (or the entry) was recorded (strategies.md,
    "Daily stop"). A result <= 0 means the stop cannot be reached that session (a small position).

    Args:
        p_ref: SMH price when E0 or the entry was recorded, USD (> 0).
        e0: day-start equity E0 (NetLiquidation), USD (> 0).
        qty: shares held (> 0; the strategy is long only).
        stop_fraction: f, a fraction in (0, 1) (0.02 = 2 %).

    Raises:
        ValueError: an input is NaN / infinite / not > 0, `qty` is not a whole number > 0, or f is not in (0, 1).
    """
    p = require_positive("p_ref", p_ref)
    e = require_positive("e0", e0)
    q = require_whole_shares("qty", qty)
    if q <= 0:
        raise ValueError(f"qty must be > 0 shares (a long position), got {qty!r}")
    f = require_positive("stop_fraction", stop_fraction)
    if f >= 1:
        raise ValueError(f"stop_fraction must be below 1, got {stop_fraction!r}")
    return p - f * e / q


def daily_stop_hit(equity: float, e0: float, stop_fraction: float = 0.02) -> bool:
    """True when equity has fallen to `(1 - stop_fraction) * E0` or below (strategies.md, "Daily stop").

    Args:
        equity: current equity (NetLiquidation), USD (finite; may be <= 0).
        e0: day-start equity E0, USD (> 0).
        stop_fraction: f in (0, 1).

    Raises:
        ValueError: `equity` is NaN / infinite, `e0` not > 0, or f not in (0, 1).
    """
    eq = require_finite("equity", equity)
    e = require_positive("e0", e0)
    f = require_positive("stop_fraction", stop_fraction)
    if f >= 1:
        raise ValueError(f"stop_fraction must be below 1, got {stop_fraction!r}")
    return eq <= (1.0 - f) * e


def stop_fill_price(open_: float, low: float, p_stop: float) -> float | None:
    """Daily-bar stop rule of the backtest: triggered when `low <= P_stop`, filled at `min(open, P_stop)`.

    A session that opens at or below the stop fills at the open (a gap through the stop); otherwise at the
    stop price. Returns None when the stop is not reached (strategies.md, "Backtest on daily bars").

    Args:
        open_, low: the session's open and low, USD (> 0).
        p_stop: the stop price, USD (finite; <= 0 means unreachable).

    Raises:
        ValueError: `open_` or `low` NaN / infinite / not > 0, `p_stop` NaN / infinite.
    """
    o = require_positive("open", open_)
    lo = require_positive("low", low)
    ps = require_finite("p_stop", p_stop)
    if lo <= ps:
        return min(o, ps)
    return None


def stop_order_price(p_stop: float, tick: float = 0.01) -> float | None:
    """The stop price sent to the broker for `P_stop`: rounded UP to the price tick, so that rounding never lets
    the loss at the trigger exceed `f * E0`; None when `P_stop` <= 0 (the stop cannot be reached: no order).

    Args:
        p_stop: :func:`stop_price`, USD a share (finite).
        tick: the price increment, USD (0.01 for US stocks above 1 USD).

    Raises:
        ValueError: `p_stop` NaN / infinite, `tick` not > 0.
    """
    p = require_finite("p_stop", p_stop)
    t = require_positive("tick", tick)
    if p <= 0:
        return None
    steps = math.ceil(round(p / t, 9))
    return round(steps * t, 10)


@dataclass(frozen=True, slots=True)
class StopCheck:
    """The stop's second line for one check (see :func:`second_line_check`).

    Attributes:
        hit: True when the position must be sold at market now.
        reference: "day_start" (position held since before the session: equity against E0) or "entry" (entered
            this session: price against the stop of the entry), or "none" (no position).
        threshold_equity: (1 - f) * E0, USD (reference "day_start").
        threshold_price: the entry's stop price, USD (reference "entry").
        reason: one line for the journal.
    """

    hit: bool
    reference: str
    threshold_equity: float | None
    threshold_price: float | None
    reason: str


def second_line_check(
    *,
    equity: float,
    e0: float,
    position_qty: int,
    stop_fraction: float = 0.02,
    price: float | None = None,
    entry_price: float | None = None,
) -> StopCheck:
    """Whether the daily stop's second line must exit now (strategies.md, "Daily stop").

    A position held since before the session is stopped when equity <= (1 - f) * E0 (:func:`daily_stop_hit`).
    A position entered during the session (the 15:55 entry, possibly a re-entry after the day's stop already
    fired, when equity is below (1 - f) * E0 from the start) is protected like its stop order: exit when the SMH
    price <= :func:`stop_price` (P_ref = `entry_price`, the same E0); otherwise a re-entry would be sold at once.

    Args:
        equity: NetLiquidation now, USD (finite).
        e0: the session's day-start equity, USD (> 0).
        position_qty: SMH shares held (>= 0).
        stop_fraction: f in (0, 1).
        price: SMH price now, USD; required when `entry_price` is given.
        entry_price: average fill price of the position's entry this session, USD; None when the position was
            held at the open.

    Raises:
        ValueError: a bad input (named), or `entry_price` given without a usable `price`.
    """
    qty = require_whole_shares("position_qty", position_qty)
    if qty < 0:
        raise ValueError(f"position_qty must be >= 0 (the strategy is long only), got {position_qty!r}")
    e = require_positive("e0", e0)
    eq = require_finite("equity", equity)
    if qty == 0:
        return StopCheck(False, "none", None, None, "no position")
    if entry_price is not None:
        if price is None:
            raise ValueError("price is required to check a position entered this session against its stop")
        p = require_positive("price", price)
        limit = stop_price(entry_price, e, qty, stop_fraction)
        hit = p <= limit
        rel = "<=" if hit else ">"
        return StopCheck(hit, "entry", None, limit,
                         f"entered this session at {entry_price:.4f} USD: price {p:.4f} {rel} its stop {limit:.4f} "
                         f"USD (P_ref - {stop_fraction:g} x E0 {e:,.2f} / {qty} shares)")
    threshold = (1.0 - stop_fraction) * e
    hit = daily_stop_hit(eq, e, stop_fraction)
    rel = "<=" if hit else ">"
    return StopCheck(hit, "day_start", threshold, None,
                     f"equity {eq:,.2f} USD {rel} {1 - stop_fraction:g} x E0 {e:,.2f} = {threshold:,.2f} USD")


# --------------------------------------------------------------------------------------------------------------
# The two decisions of the day
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EmaDecision:
    """The 15:55 decision with every input it used, so that a flow can journal it in one row.

    Attributes:
        action: BUY / SELL / HOLD / NO_TRADE (see :class:`Action`).
        shares: shares to trade (> 0 for BUY and SELL, 0 otherwise).
        session: the session decided for, when the caller gave it.
        price: SMH price used, USD.
        position_qty: SMH shares held before the decision.
        net_liquidation, available_funds: USD, as given.
        state_session, ema_fast_prev, ema_slow_prev, history_sessions: the final state the step started from.
        ema_fast, ema_slow, signal: provisional EMAs (USD) and signal.
        leverage, leverage_reason, vix_used, vix_source, vix_current, vix_last_close: the leverage and its inputs.
        target_shares: `floor(NetLiquidation * L / price)` before the funds check.
        reason: one line explaining the action.
    """

    action: Action
    shares: int
    session: date | None
    price: float
    position_qty: int
    net_liquidation: float
    available_funds: float
    state_session: date
    ema_fast_prev: float
    ema_slow_prev: float
    history_sessions: int
    ema_fast: float
    ema_slow: float
    signal: Signal
    leverage: float
    leverage_reason: str
    vix_used: float | None
    vix_source: str
    vix_current: float | None
    vix_last_close: float | None
    target_shares: int
    reason: str
    extra: dict[str, Any] = field(default_factory=dict)

    def as_record(self) -> dict[str, Any]:
        """A flat dict of plain values (enums as their names) for the journal."""
        rec: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            if name == "extra":
                continue
            v = getattr(self, name)
            rec[name] = v.value if isinstance(v, Enum) else v
        rec.update(self.extra)
        return rec


def decide_before_close(
    state: EmaState,
    price: float,
    position_qty: int,
    net_liquidation: float,
    available_funds: float,
    vix: VixInfo,
    params: EmaParams | None = None,
    *,
    session: date | None = None,
) -> EmaDecision:
    """The decision 5 minutes before the close (15:55; 12:55 on early closes), strategies.md "Decision".

    Provisional EMAs = one step from `state` with `price` standing in for today's close. Then:
    - BULL and flat: BUY :func:`position_size` shares (NO_TRADE when that is 0);
    - BEAR and long: SELL the whole position;
    - otherwise HOLD.
    The leverage is worked out (and journaled) on every call, also when nothing is bought.

    Args:
        state: the final EMAs of the last completed session (before today).
        price: the current SMH price, USD (> 0).
        position_qty: SMH shares held now (>= 0; the strategy is long only).
        net_liquidation: NetLiquidation, USD (> 0).
        available_funds: USD value of SMH the account may still buy (see :func:`position_size`).
        vix: what is known of VIX (see :class:`VixInfo`).
        params: strategy parameters (default: strategies.md).
        session: today's session, if known; it must come after `state.session`.

    Raises:
        ValueError: `state` folds fewer than `params.min_history` closes; `session` is not after
            `state.session`; `price` / `net_liquidation` NaN or not > 0; `available_funds` NaN;
            `position_qty` negative or not whole.
    """
    params = params or EmaParams()
    if state.count < params.min_history:
        raise ValueError(
            f"EMA history too short: the state folds {state.count} sessions, at least {params.min_history} needed"
        )
    if (state.fast_span, state.slow_span) != (params.fast, params.slow):
        raise ValueError(
            f"EMA state spans {state.fast_span}/{state.slow_span} differ from the parameters "
            f"{params.fast}/{params.slow}"
        )
    day = None if session is None else _as_session("session", session)
    if day is not None and day <= state.session:
        raise ValueError(f"session {day} is not after the state's last folded session {state.session}")
    qty = require_whole_shares("position_qty", position_qty)
    if qty < 0:
        raise ValueError(f"position_qty must be >= 0 (the strategy is long only), got {position_qty!r}")
    nl = require_positive("net_liquidation", net_liquidation)
    funds = require_finite("available_funds", available_funds)

    prov = provisional(state, price)
    lev = choose_leverage(vix, params.vix_table, params.default_leverage)
    want = target_shares(nl, lev.leverage, prov.price)
    ema_text = f"provisional EMA{params.fast} {prov.ema_fast:.4f} vs EMA{params.slow} {prov.ema_slow:.4f}"

    if prov.signal is Signal.BULL and qty == 0:
        shares = position_size(nl, lev.leverage, prov.price, funds)
        if shares > 0:
            action = Action.BUY
            sized = "" if shares == want else f", sized down from {want} to the available funds {funds:,.2f} USD"
            reason = f"BULL and flat ({ema_text}): buy {shares} shares at L {lev.leverage:g}{sized}"
        else:
            action = Action.NO_TRADE
            reason = (
                f"BULL and flat ({ema_text}) but the size is 0 shares: target {want}, available funds "
                f"{funds:,.2f} USD at {prov.price:.4f} USD a share"
            )
    elif prov.signal is Signal.BEAR and qty > 0:
        action, shares = Action.SELL, qty
        reason = f"BEAR and long ({ema_text}): sell all {qty} shares"
    else:
        action, shares = Action.HOLD, 0
        held = f"long {qty} shares" if qty > 0 else "flat"
        reason = f"{prov.signal.value} and {held} ({ema_text}): nothing to do"

    return EmaDecision(
        action=action,
        shares=shares,
        session=day,
        price=prov.price,
        position_qty=qty,
        net_liquidation=nl,
        available_funds=funds,
        state_session=state.session,
        ema_fast_prev=state.ema_fast,
        ema_slow_prev=state.ema_slow,
        history_sessions=state.count,
        ema_fast=prov.ema_fast,
        ema_slow=prov.ema_slow,
        signal=prov.signal,
        leverage=lev.leverage,
        leverage_reason=lev.reason,
        vix_used=lev.vix_used,
        vix_source=lev.source,
        vix_current=vix.current,
        vix_last_close=vix.last_close,
        target_shares=want,
        reason=reason,
    )


@dataclass(frozen=True, slots=True)
class CloseUpdate:
    """The update at the close: the new final state and whether a BEAR-while-long exit is due.

    Attributes:
        state: the new final state (includes the session's close).
        close: the official close folded in, USD.
        signal: the final signal.
        exit_next_open: True when the final signal is BEAR while long: exit at the next session's open.
        reason: one line for the journal.
    """

    state: EmaState
    close: float
    signal: Signal
    exit_next_open: bool
    reason: str


def close_update(state: EmaState, session: date, close: float, position_qty: int) -> CloseUpdate:
    """Fold the session's official close into the EMAs (16:00; 13:00 on early closes), strategies.md "Update".

    "If the final signal is BEAR while still long (the 15:55 price said otherwise), exit at the next session's
    open": `exit_next_open` is True exactly then.

    Args:
        state: the final state before this session.
        session: the session whose close this is.
        close: its official close, USD (> 0).
        position_qty: SMH shares held after the 15:55 decision (>= 0).

    Raises:
        ValueError: as :meth:`EmaState.update`; `position_qty` negative or not whole.
    """
    qty = require_whole_shares("position_qty", position_qty)
    if qty < 0:
        raise ValueError(f"position_qty must be >= 0 (the strategy is long only), got {position_qty!r}")
    new = state.update(session, close)
    sig = new.signal
    exit_due = sig is Signal.BEAR and qty > 0
    if exit_due:
        reason = f"final BEAR while long {qty} shares: exit at the next session's open"
    else:
        reason = f"final {sig.value} (EMA{new.fast_span} {new.ema_fast:.4f}, EMA{new.slow_span} {new.ema_slow:.4f})"
    return CloseUpdate(state=new, close=float(close), signal=sig, exit_next_open=exit_due, reason=reason)


@dataclass(frozen=True, slots=True)
class DailyClose:
    """Whether the session's official daily close is known yet (see :func:`official_close`).

    Attributes:
        final: True when `close` is the session's official close.
        close: the close, USD (None when not final).
        reason: why it is, or is not yet, final (for the journal and the retry log).
    """

    final: bool
    close: float | None
    reason: str


def official_close(
    bars: pd.DataFrame,
    session: date,
    session_close: datetime,
    now: datetime,
    settle_seconds: float = 0.0,
) -> DailyClose:
    """Recognise the session's final daily bar among broker daily bars.

    The rule (the same for IB and the paper exchange): the bar is final when the broker's clock `now` is at or
    after the session's close plus `settle_seconds` AND a bar stamped with the session's date is present with a
    usable close. Before the close both serve a partial bar of the session (the paper exchange aggregates the
    5-minute bars that ended; IB its running daily bar), indistinguishable from a final one by its content; after
    the close IB folds the closing auction's official print into the day's bar within minutes, which
    `settle_seconds` waits for (the paper exchange serves the whole bar from the close on: settle 0 is exact there).

    Args:
        bars: daily bars in the shape of `core.broker` (index: tz-aware midnight of each session date).
        session: the session whose close is wanted (New York date).
        session_close: the session's close, aware (16:00, or 13:00 on early closes).
        now: the broker's clock, aware.
        settle_seconds: seconds after the close before the bar counts as final (>= 0).

    Raises:
        ValueError: a naive `session_close` / `now`, or a negative `settle_seconds`.
    """
    if session_close.tzinfo is None or now.tzinfo is None:
        raise ValueError("session_close and now must be timezone-aware")
    settle = require_finite("settle_seconds", settle_seconds)
    if settle < 0:
        raise ValueError(f"settle_seconds must be >= 0, got {settle_seconds!r}")
    ready_at = session_close + timedelta(seconds=settle)
    if now < ready_at:
        return DailyClose(False, None, f"broker clock {now.isoformat()} is before the close {session_close.isoformat()}"
                                       f" + {settle:g} s settling: the daily bar may still change")
    day = _as_session("session", session)
    rows = [i for i, ts in enumerate(bars.index) if ts.date() == day] if len(bars) else []
    if not rows:
        last = bars.index[-1].date() if len(bars) else None
        return DailyClose(False, None, f"no daily bar for {day} yet (latest: {last})")
    value = bars["close"].iloc[rows[-1]]
    try:
        close = float(value)
    except (TypeError, ValueError):
        close = float("nan")
    if not math.isfinite(close) or close <= 0:
        return DailyClose(False, None, f"the daily bar of {day} has no usable close ({value!r})")
    return DailyClose(True, close, f"daily bar of {day} final: broker clock {now.isoformat()} >= close + {settle:g} s; "
                                   f"close {close:.4f} USD")


def next_open_exit(update: CloseUpdate, now: datetime, next_open: datetime) -> tuple[bool, str]:
    """Whether the update's exit for the next open may be sent now: only when `update.exit_next_open` and the
    broker clock `now` is before the next session's open `next_open` (a market order sent later would fill at
    once, at an unplanned time). Returns (send, reason).

    Raises:
        ValueError: a naive datetime.
    """
    if now.tzinfo is None or next_open.tzinfo is None:
        raise ValueError("now and next_open must be timezone-aware")
    if not update.exit_next_open:
        return False, update.reason
    if now >= next_open:
        return False, (f"{update.reason}; NOT sent: the broker clock {now.isoformat()} is past the next open "
                       f"{next_open.isoformat()} (the 15:55 decision of that session decides instead)")
    return True, f"{update.reason}: market order held by the broker for the open of {next_open.date()}"
