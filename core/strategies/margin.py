"""Sizing an entry to what the account's margin allows, from IB's what-if answer (a pure function).

Before an entry is sent, the flow asks IB with a what-if order (`Broker.what_if`) what the order does to margin.
IB answers with initial margin and equity with loan before and after the order. An order fits when the initial
margin after it does not exceed equity with loan after it; one that does not is cut to the shares whose margin
the account's room covers:

    room      = equity_with_loan_after - init_margin_before - buffer x equity_with_loan_before
    per share = init_margin_change / shares           (IB's margin of one more share, USD)
    allowed   = floor(room / per share), at least 0

`buffer` (a fraction, default 0.5 %) keeps a cushion for the price moving between the what-if and the fill.
The what-if is asked when the order would be sent; asked after IB's 15:50 Reg T check (the EMA entry at 15:55),
its initial margin is the overnight requirement (50 % Reg T, about 15 % Portfolio Margin), so the order is sized
to what the account may hold overnight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from core.broker import MarginImpact

DEFAULT_BUFFER = 0.005


@dataclass(frozen=True, slots=True)
class MarginFit:
    """The entry's size after the margin check.

    Attributes:
        shares: shares to buy (<= the requested ones; 0 when nothing fits).
        requested: shares asked for.
        allowed: shares the margin room covers (may exceed `requested`).
        capped: whether `shares` < `requested`.
        reason: one line saying what the check found (USD numbers).
        record: the what-if numbers and the cap, flat, for the decision's journaled inputs.
    """

    shares: int
    requested: int
    allowed: int
    capped: bool
    reason: str
    record: dict[str, Any]


def fit_to_margin(requested: int, impact: MarginImpact, buffer: float = DEFAULT_BUFFER) -> MarginFit:
    """Cut `requested` shares to what `impact` (IB's what-if of buying them) says the margin allows.

    Raises:
        ValueError: `requested` is not a positive whole number; a what-if number is NaN or infinite; `buffer`
            is outside [0, 0.5).
    """
    if int(requested) != requested or requested <= 0:
        raise ValueError(f"requested must be a positive whole number of shares, got {requested!r}")
    if not 0 <= buffer < 0.5:
        raise ValueError(f"buffer must be a fraction in [0, 0.5), got {buffer!r}")
    nums = impact.as_record()
    for k, v in nums.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"the what-if's {k} is {v!r}: the margin is not known, nothing is sized from it")
    room = impact.equity_with_loan_after - impact.init_margin_before - buffer * impact.equity_with_loan_before
    per_share = impact.init_margin_change / requested
    if per_share <= 0:
        allowed = requested  # the order adds no margin (it reduces a short, or IB charges none)
    else:
        allowed = max(0, math.floor(room / per_share))
    shares = min(int(requested), allowed)
    capped = shares < requested
    after = impact.init_margin_before + per_share * shares
    if capped:
        reason = (f"sized down from {requested} to {shares} shares by IB's what-if: initial margin after "
                  f"{impact.init_margin_after:,.2f} USD against equity with loan after "
                  f"{impact.equity_with_loan_after:,.2f} USD less a {buffer:.1%} cushion; {shares} shares need "
                  f"{after:,.2f} USD")
    else:
        reason = (f"IB's what-if: initial margin after {impact.init_margin_after:,.2f} USD within equity with loan "
                  f"{impact.equity_with_loan_after:,.2f} USD")
    record = {f"whatif_{k}": v for k, v in nums.items()}
    record.update({"margin_requested_shares": int(requested), "margin_allowed_shares": allowed,
                   "margin_capped": capped, "margin_buffer": buffer, "margin_check": reason})
    return MarginFit(shares=shares, requested=int(requested), allowed=allowed, capped=capped, reason=reason,
                     record=record)
