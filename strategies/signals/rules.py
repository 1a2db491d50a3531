"""The signals strategy's rules (seed 004, the multi-ticker framework): pure functions, no Prefect, no broker, no
clock.

Signals: per ticker, BUY (be long), SHORT (be short) or SELL (be out of a long), each with a confidence in [0, 1],
from an external prediction source (`strategies.signals.source`).

The rule file (YAML, as the seed's `config/trading_rules.yaml`; `load_rules`):

    rules:
      - name: High confidence buy
        condition: {type: signal, signal: BUY, min_confidence: 0.8}
        action: {type: create_position, side: BUY, stop_loss_pct: 0.03, take_profit_pct: 0.08}
      - name: Short on ATR
        condition: {type: signal, signal: SHORT, min_confidence: 0.7}
        action: {type: create_position, side: SHORT, atr_stop_multiplier: 2.0, atr_target_multiplier: 4.0}
      - name: Out on sell
        condition: {type: signal, signal: SELL, min_confidence: 0.6}
        action: {type: close}
      - name: Scale in on profit
        condition: {type: position_profit, min_profit_pct: 0.02}
        action: {type: scale_in, scale_pct: 0.5}

Conditions: `signal` (the ticker's signal is `signal` with confidence >= `min_confidence`) and `position_profit`
(the open position's gain since its average cost >= `min_profit_pct`, a fraction). Actions: `create_position`
(side BUY or SHORT; stop-loss and take-profit either as fractions of the entry price, `stop_loss_pct` /
`take_profit_pct`, or as multiples of the ATR, `atr_stop_multiplier` / `atr_target_multiplier`), `scale_in`
(add `scale_pct` of the position), `close`, `reverse` (close and open the other side, with the stops of the
rule's fields). `_pct` fields are fractions (0.03 = 3 %), as in the seed.

What a signal does to a ticker's position (`plan_ticker`), as the seed's "Position Reversal":
- the same side as the position: ignored (no second position);
- the opposite side (BUY while short, SHORT while long): the position is closed and the new one opened (a
  reversal); SELL while long closes it (a `close` rule);
- flat: a `create_position` rule opens one, if the limits allow.
The first rule whose condition matches wins; signal rules are looked at before profit rules, and a profit rule
acts only when no signal rule did (an ignored same-side signal counts as none).

Linked orders: each position is entered as an IB bracket, the entry (parent) with its stop-loss (STP) and
take-profit (LMT) children, GTC, in one OCA group (type 2: a fill of one reduces the other by the shares filled, so
a partial fill keeps them in step; at 0 it is cancelled). When the position and the stop-loss's quantity differ (a
scale-in, a partial fill), the children's quantity is changed to the position's at the same prices (`resize`).

Limits (`Limits`): per ticker, the position's value (USD) at most `max_position_usd` (a scale-in is cut to fit);
per account, at most `max_positions` tickers with a position; `max_daily_loss_usd`: once the strategy's P&L of the
session (realized plus unrealized, net of commissions) is at or below minus this, it opens and adds nothing more
that session (closes and stops still work): the strategy is halted for the day.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

SIDES = ("BUY", "SELL", "SHORT")
CONDITIONS = ("signal", "position_profit")
ACTIONS = ("create_position", "scale_in", "close", "reverse")


class RuleFileError(ValueError):
    """The rule file is malformed; the message names the rule and the field."""


@dataclass(frozen=True)
class Signal:
    """One ticker's signal: `side` BUY / SELL / SHORT, `confidence` in [0, 1]."""

    symbol: str
    side: str
    confidence: float

    def __post_init__(self) -> None:
        if self.side not in SIDES:
            raise ValueError(f"signal for {self.symbol}: side must be one of {SIDES}, got {self.side!r}")
        if not (isinstance(self.confidence, (int, float)) and math.isfinite(self.confidence)
                and 0.0 <= self.confidence <= 1.0):
            raise ValueError(f"signal for {self.symbol}: confidence must be in [0, 1], got {self.confidence!r}")


@dataclass(frozen=True)
class Condition:
    type: str
    signal: str | None = None
    min_confidence: float = 0.0
    min_profit_pct: float = 0.0


@dataclass(frozen=True)
class Action:
    type: str
    side: str | None = None
    stop_loss_pct: float | None = None
    take_profit_pct: float | None = None
    atr_stop_multiplier: float | None = None
    atr_target_multiplier: float | None = None
    scale_pct: float = 0.0


@dataclass(frozen=True)
class Rule:
    name: str
    condition: Condition
    action: Action


def _num(value: Any, where: str, lo: float = 0.0, hi: float | None = None, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RuleFileError(f"{where}: must be a number, got {value!r}")
    if value < lo or (hi is not None and value > hi) or (positive and value <= 0):
        raise RuleFileError(f"{where}: {value!r} is out of range")
    return float(value)


def parse_rules(doc: Any) -> tuple[Rule, ...]:
    """The rules of a parsed rule file (`{"rules": [...]}`, see the module docstring).

    Raises:
        RuleFileError: naming the rule (by position and name) and the field that is wrong.
    """
    if not isinstance(doc, Mapping) or not isinstance(doc.get("rules"), list) or not doc["rules"]:
        raise RuleFileError("the rule file needs a non-empty list `rules`")
    out = []
    for i, raw in enumerate(doc["rules"], 1):
        name = str(raw.get("name") or f"rule {i}") if isinstance(raw, Mapping) else f"rule {i}"
        where = f"rule {i} ({name})"
        if not isinstance(raw, Mapping) or not isinstance(raw.get("condition"), Mapping) \
                or not isinstance(raw.get("action"), Mapping):
            raise RuleFileError(f"{where}: needs `condition` and `action` mappings")
        c, a = raw["condition"], raw["action"]
        if c.get("type") not in CONDITIONS:
            raise RuleFileError(f"{where}: condition.type must be one of {CONDITIONS}, got {c.get('type')!r}")
        if a.get("type") not in ACTIONS:
            raise RuleFileError(f"{where}: action.type must be one of {ACTIONS}, got {a.get('type')!r}")
        if c["type"] == "signal":
            if c.get("signal") not in SIDES:
                raise RuleFileError(f"{where}: condition.signal must be one of {SIDES}, got {c.get('signal')!r}")
            cond = Condition("signal", signal=c["signal"],
                             min_confidence=_num(c.get("min_confidence", 0.0), f"{where}: min_confidence", 0, 1))
        else:
            cond = Condition("position_profit",
                             min_profit_pct=_num(c.get("min_profit_pct"), f"{where}: min_profit_pct", -1, 10))
        kw: dict[str, Any] = {"type": a["type"]}
        if a["type"] in ("create_position", "reverse"):
            side = a.get("side")
            if a["type"] == "create_position" and side not in ("BUY", "SHORT"):
                raise RuleFileError(f"{where}: action.side must be BUY or SHORT, got {side!r}")
            kw["side"] = side
            fixed = [a.get("stop_loss_pct"), a.get("take_profit_pct")]
            atr = [a.get("atr_stop_multiplier"), a.get("atr_target_multiplier")]
            if all(v is not None for v in fixed) == all(v is not None for v in atr):
                raise RuleFileError(f"{where}: give stop_loss_pct and take_profit_pct, or atr_stop_multiplier and "
                                    "atr_target_multiplier (one pair)")
            if fixed[0] is not None:
                kw["stop_loss_pct"] = _num(fixed[0], f"{where}: stop_loss_pct", 0, 0.5, positive=True)
                kw["take_profit_pct"] = _num(fixed[1], f"{where}: take_profit_pct", 0, 5, positive=True)
            else:
                kw["atr_stop_multiplier"] = _num(atr[0], f"{where}: atr_stop_multiplier", 0, 50, positive=True)
                kw["atr_target_multiplier"] = _num(atr[1], f"{where}: atr_target_multiplier", 0, 50, positive=True)
        if a["type"] == "scale_in":
            if cond.type != "position_profit":
                raise RuleFileError(f"{where}: scale_in needs a position_profit condition")
            kw["scale_pct"] = _num(a.get("scale_pct"), f"{where}: scale_pct", 0, 5, positive=True)
        out.append(Rule(name, cond, Action(**kw)))
    return tuple(out)


def load_rules(text: str) -> tuple[Rule, ...]:
    """`parse_rules` of a YAML text. Raises RuleFileError (also for YAML that does not parse)."""
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RuleFileError(f"the rule file is not YAML: {exc}") from None
    return parse_rules(doc)


@dataclass(frozen=True)
class Limits:
    """USD amounts; `max_positions` tickers. See the module docstring."""

    position_usd: float = 10_000.0
    max_position_usd: float = 20_000.0
    max_positions: int = 10
    max_daily_loss_usd: float = 1_000.0


@dataclass(frozen=True)
class Bracket:
    """A position's linked stop-loss and take-profit as the broker holds them: order refs, shares (the stop's
    remaining quantity), prices (USD)."""

    stop_ref: str
    target_ref: str
    quantity: float
    stop_price: float
    target_price: float


@dataclass(frozen=True)
class TickerState:
    """A ticker now: `position` shares (negative short), `avg_cost` USD a share, `price` USD (the current price),
    `atr` USD (of the last 5-minute bars; NaN when no rule needs it: `needs_atr`), its `bracket` (None without
    one)."""

    symbol: str
    position: int
    avg_cost: float
    price: float
    atr: float
    bracket: Bracket | None = None

    @property
    def direction(self) -> int:
        return (self.position > 0) - (self.position < 0)

    @property
    def profit_pct(self) -> float:
        """The gain of the position since its average cost, a fraction (0 when flat)."""
        if not self.position or self.avg_cost <= 0:
            return 0.0
        return (self.price / self.avg_cost - 1.0) * self.direction


@dataclass(frozen=True)
class Step:
    """One thing to do at the broker, in order: 'close' (cancel the pair, market order for the whole position),
    'open' (a bracket: market `action` of `quantity` with its stop-loss at `stop` and take-profit at `target`),
    'scale_in' (market add, then the pair changed to the new position), 'resize' (the pair changed to `quantity`;
    `stop`/`target` are its prices)."""

    kind: str
    action: str
    quantity: int
    stop: float | None = None
    target: float | None = None


@dataclass(frozen=True)
class Plan:
    """What to do with one ticker: `decision` (the journal's BUY / SELL / HOLD / NO_TRADE), `steps`, `reason`,
    `rule` (the rule that matched, or None), `inputs` (journaled)."""

    symbol: str
    decision: str
    steps: tuple[Step, ...]
    reason: str
    rule: str | None = None
    inputs: dict[str, Any] = field(default_factory=dict)

    def as_record(self) -> dict[str, Any]:
        return {"decision": self.decision, "reason": self.reason, "rule": self.rule,
                "steps": [asdict(s) for s in self.steps]}


def _tick(price: float) -> float:
    return round(round(price / 0.01) * 0.01, 2)


def bracket_prices(direction: int, entry: float, action: Action, atr_value: float) -> tuple[float, float]:
    """(stop-loss, take-profit) prices (USD, on the 0.01 tick) for a position of `direction` (+1 long, -1 short)
    entered near `entry`.

    Raises:
        ValueError: an ATR rule with a non-positive or non-finite ATR.
    """
    if action.stop_loss_pct is not None:
        stop_d, target_d = entry * action.stop_loss_pct, entry * action.take_profit_pct
    else:
        if not (math.isfinite(atr_value) and atr_value > 0):
            raise ValueError(f"ATR {atr_value!r}: cannot place ATR stops")
        stop_d, target_d = atr_value * action.atr_stop_multiplier, atr_value * action.atr_target_multiplier
    stop, target = entry - direction * stop_d, entry + direction * target_d
    if stop <= 0 or target <= 0:
        raise ValueError(f"stop {stop:.2f} or target {target:.2f} is not a positive price")
    return _tick(stop), _tick(target)


def signal_rule(signal: Signal | None, rules: Sequence[Rule]) -> Rule | None:
    """The first signal rule whose condition `signal` meets (None without a signal or a match)."""
    if signal is None:
        return None
    return next((r for r in rules if r.condition.type == "signal" and r.condition.signal == signal.side
                 and signal.confidence >= r.condition.min_confidence), None)


def needs_atr(signal: Signal | None, rules: Sequence[Rule]) -> bool:
    """Whether the rule `signal` meets places ATR stops (so the ATR must be known to plan)."""
    rule = signal_rule(signal, rules)
    return rule is not None and rule.action.atr_stop_multiplier is not None


def _shares(usd: float, price: float) -> int:
    return int(math.floor(usd / price)) if price > 0 else 0


def _signal_direction(side: str) -> int:
    return {"BUY": 1, "SHORT": -1, "SELL": 0}[side]


def plan_ticker(state: TickerState, signal: Signal | None, rules: Sequence[Rule], limits: Limits, *,
                open_positions: int, halted: str | None = None) -> Plan:
    """What to do with one ticker (see the module docstring).

    Args:
        state: the ticker now (`price` and `atr` finite and positive).
        signal: its signal this run, or None.
        rules: the rule file's rules, in order.
        limits: the limits.
        open_positions: tickers of the strategy with a position now (this one included).
        halted: why the strategy opens and adds nothing today (the daily loss limit), or None.

    Raises:
        ValueError: a price or ATR that is not finite and positive (never size from it).
    """
    if not (math.isfinite(state.price) and state.price > 0):
        raise ValueError(f"{state.symbol}: price {state.price!r} is not a positive number")
    inputs = {"position": state.position, "avg_cost": state.avg_cost, "price": state.price, "atr": state.atr,
              "profit_pct": state.profit_pct, "open_positions": open_positions, "halted": halted,
              "signal": signal.side if signal else None, "confidence": signal.confidence if signal else None,
              "bracket": asdict(state.bracket) if state.bracket else None}

    def plan(decision: str, reason: str, steps: Sequence[Step] = (), rule: str | None = None) -> Plan:
        return Plan(state.symbol, decision, tuple(steps), reason, rule, inputs)

    keep: list[Step] = []
    b = state.bracket
    if state.position and b is not None and b.quantity != abs(state.position):
        keep.append(Step("resize", "", abs(state.position), b.stop_price, b.target_price))
    elif state.position and b is None:
        reason = f"{state.symbol}: a position of {state.position} shares without its stop-loss/take-profit"
        return plan("NO_TRADE", reason + ": the pair's prices are unknown; close or protect it by hand")

    ignored = ""
    rule = signal_rule(signal, rules)
    if rule is not None:
        a = rule.action
        want = _signal_direction(signal.side)
        if a.type == "close":
            # SELL and SHORT close a long, BUY closes a short; SELL says nothing about a short
            if (state.direction > 0 and signal.side in ("SELL", "SHORT")) or (state.direction < 0 and
                                                                              signal.side == "BUY"):
                return plan("SELL" if state.direction > 0 else "BUY",
                            f"{signal.side} {signal.confidence:.2f}: close the {state.position} shares",
                            [Step("close", "SELL" if state.direction > 0 else "BUY", abs(state.position))], rule.name)
            return plan("HOLD", f"{signal.side} {signal.confidence:.2f}: nothing to close", keep, rule.name)
        target_dir = 1 if (a.side or ("BUY" if want > 0 else "SHORT")) == "BUY" else -1
        if a.type == "reverse" and not state.direction:
            return plan("HOLD", f"{signal.side}: flat, nothing to reverse", keep, rule.name)
        if state.direction == target_dir:  # ignored: as if there were no signal (a profit rule may still act)
            ignored = f"{signal.side} {signal.confidence:.2f}: same side as the position of {state.position}: ignored"
            rule = None
    if rule is not None:  # a position to open (flat) or to reverse to (the other side)
        steps: list[Step] = []
        if state.direction:
            steps.append(Step("close", "SELL" if state.direction > 0 else "BUY", abs(state.position)))
        blocked = halted or (f"{open_positions} positions open, the account's limit is {limits.max_positions}"
                             if not state.direction and open_positions >= limits.max_positions else None)
        qty = _shares(min(limits.position_usd, limits.max_position_usd), state.price)
        if blocked or qty < 1:
            why = blocked or f"{limits.position_usd:g} USD buys no share at {state.price:.2f}"
            if steps:
                return plan("SELL" if state.direction > 0 else "BUY",
                            f"{signal.side}: close the {state.position} shares; no new position ({why})", steps,
                            rule.name)
            return plan("NO_TRADE", f"{signal.side} {signal.confidence:.2f}: no position ({why})", keep, rule.name)
        stop, target = bracket_prices(target_dir, state.price, a, state.atr)
        action = "BUY" if target_dir > 0 else "SELL"
        steps.append(Step("open", action, qty, stop, target))
        verb = "reverse to" if state.direction else "open"
        return plan(action, f"{signal.side} {signal.confidence:.2f}: {verb} {'long' if target_dir > 0 else 'short'} "
                            f"{qty} at about {state.price:.2f}, stop {stop:.2f}, target {target:.2f}", steps,
                    rule.name)

    for rule in rules:
        c, a = rule.condition, rule.action
        if c.type != "position_profit" or not state.position or state.profit_pct < c.min_profit_pct:
            continue
        if a.type == "close":
            return plan("SELL" if state.direction > 0 else "BUY",
                        f"profit {state.profit_pct:.2%}: close", [Step("close", "SELL" if state.direction > 0 else
                                                                      "BUY", abs(state.position))], rule.name)
        if a.type != "scale_in" or b is None:
            continue
        if halted:
            return plan("NO_TRADE", f"profit {state.profit_pct:.2%}: no scale-in ({halted})", keep, rule.name)
        room = limits.max_position_usd - abs(state.position) * state.price
        add = min(int(math.floor(abs(state.position) * a.scale_pct)), _shares(room, state.price))
        if add < 1:
            return plan("HOLD", f"profit {state.profit_pct:.2%}: at the ticker's limit "
                                f"{limits.max_position_usd:g} USD, no scale-in", keep, rule.name)
        action = "BUY" if state.direction > 0 else "SELL"
        return plan(action, f"profit {state.profit_pct:.2%}: scale in {add} shares", [Step(
            "scale_in", action, add, b.stop_price, b.target_price)], rule.name)
    if keep:
        return plan("HOLD", f"{ignored + '; ' if ignored else ''}position {state.position}, its stop-loss covers "
                            f"{b.quantity:g}: resize the pair", keep)
    return plan("HOLD", ignored or "no rule matched", keep)


def position_from_fills(fills: Sequence[Mapping[str, Any]]) -> tuple[int, float]:
    """(signed shares, average cost USD a share) of the position the fills leave (average cost: of the shares
    added since the position was last flat or changed side; 0.0 when flat).

    Raises:
        ValueError: a fractional position.
    """
    qty, avg = 0.0, 0.0
    for f in fills:
        shares, price = float(f["shares"]), float(f["price"])
        if qty == 0 or (qty > 0) == (shares > 0):
            avg = (avg * abs(qty) + price * abs(shares)) / (abs(qty) + abs(shares))
            qty += shares
        elif abs(shares) <= abs(qty):
            qty += shares
        else:  # through flat to the other side
            qty += shares
            avg = price
        if qty == 0:
            avg = 0.0
    if qty != int(qty):
        raise ValueError(f"a fractional position of {qty} shares")
    return int(qty), avg


def session_pnl(fills: Sequence[Mapping[str, Any]], marks: Mapping[str, float]) -> float:
    """The P&L of a session's fills (USD): for each symbol, the cash of its fills plus its net shares valued at
    `marks[symbol]`, minus commissions. Positions carried from earlier sessions are not in `fills` (their
    day's change is not counted: the limit is about what the strategy did today).

    Raises:
        ValueError: a symbol with shares and no mark.
    """
    total = 0.0
    by_symbol: dict[str, list[float]] = {}
    for f in fills:
        cash_shares = by_symbol.setdefault(f["symbol"], [0.0, 0.0])
        cash_shares[0] -= float(f["shares"]) * float(f["price"])
        cash_shares[1] += float(f["shares"])
        total -= float(f.get("commission") or 0.0)
    for symbol, (cash, shares) in by_symbol.items():
        if shares and symbol not in marks:
            raise ValueError(f"{symbol}: {shares:g} shares bought or sold today and no price to value them")
        total += cash + shares * marks.get(symbol, 0.0)
    return total


def halted_reason(pnl: float, limits: Limits, already: str | None) -> str | None:
    """Why the strategy is halted for the day: `already` (a halt journaled earlier today stays), else the daily
    loss limit when `pnl` (USD) is at or below minus it, else None."""
    if already:
        return already
    if pnl <= -limits.max_daily_loss_usd:
        return f"daily loss limit: the session's P&L {pnl:.2f} USD is at or below -{limits.max_daily_loss_usd:g} USD"
    return None
