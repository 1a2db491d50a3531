"""Margin as IB computes it for US stocks, by account type: the paper exchange's margin model.

Sources (IB's "Margin Requirements: Stocks" page, interactivebrokers.com/en/index.php?f=4745&p=stk, and IB's
Portfolio Margin page, f=4745&p=pm; check them before relying on a number):

| account type (`AccountType` setting) | opening trades (IB initial) | maintenance | overnight (Reg T end of day) |
|---|---|---|---|
| `reg_t_cash` (Cash)            | 100 % long; no shorts           | 100 %            | 100 %  |
| `reg_t_margin` (Reg T Margin)  | 25 % long, 30 % short (4x)      | 25 % / 30 %      | 50 % (Reg T initial: 2x) |
| `portfolio_margin` (Portfolio Margin) | 15 % (risk-based; the stress of a broad ETF about +/-15 %) | 15 % | 15 % |

The rule modelled for the overnight requirement (Reg T margin accounts): IB checks the Reg T end-of-day initial
margin (the SMA balance) at 15:50 New York time; from then until the next session's open an opening trade must
satisfy the 50 % Reg T initial margin, and a position that still breaks it at the session's close is liquidated
(IB's real-time liquidation, which gives no margin call). Here the check time is the close minus 10 minutes
(15:50, 12:50 on early closes), and at the close the exchange liquidates, at the last price, the largest
positions first, until equity with loan covers the Reg T requirement. Not modelled: the pattern-day-trader
day-trade count, SMA carried over from earlier days (SMA here is EquityWithLoan - 50 % x gross), the 30 % /
special maintenance of low-priced or concentrated stocks, Portfolio Margin's full risk scan (a flat 15 %).

All values in USD; a position's value is |shares| x price.
"""

from __future__ import annotations

from dataclasses import dataclass

ACCOUNT_TYPES = ("reg_t_cash", "reg_t_margin", "portfolio_margin")
OVERNIGHT_CHECK_BEFORE_CLOSE = 600
"""Seconds before the close at which IB checks Reg T end-of-day margin (15:50 on a 16:00 close)."""


@dataclass(frozen=True)
class MarginRates:
    """Fractions of position value (0.25 = 25 %) required for long and short stock positions."""

    initial_long: float
    initial_short: float
    maint_long: float
    maint_short: float
    overnight: float
    shorts_allowed: bool = True


RATES = {
    "reg_t_cash": MarginRates(1.0, 1.0, 1.0, 1.0, 1.0, shorts_allowed=False),
    "reg_t_margin": MarginRates(0.25, 0.30, 0.25, 0.30, 0.50),
    "portfolio_margin": MarginRates(0.15, 0.15, 0.15, 0.15, 0.15),
}


def rates_for(account_type: str) -> MarginRates:
    """The rates of `account_type` (one of ACCOUNT_TYPES). Raises ValueError naming the bad value."""
    try:
        return RATES[account_type]
    except KeyError:
        raise ValueError(f"account type must be one of {', '.join(ACCOUNT_TYPES)}, not {account_type!r}") from None


@dataclass(frozen=True)
class Requirement:
    """Margin of a set of positions (USD): IB initial, maintenance, and Reg T end-of-day (overnight)."""

    initial: float
    maintenance: float
    overnight: float
    gross: float


def requirement(account_type: str, values: list[float], overnight_now: bool) -> Requirement:
    """Margin of positions with signed market values `values` (USD; negative = short).

    `overnight_now`: whether the overnight requirement is in force (between the 15:50 check and the next open);
    then the initial requirement of a Reg T margin account is the larger of IB's and Reg T's 50 %.
    """
    r = rates_for(account_type)
    init = maint = gross = 0.0
    for v in values:
        a = abs(v)
        gross += a
        init += a * (r.initial_long if v >= 0 else r.initial_short)
        maint += a * (r.maint_long if v >= 0 else r.maint_short)
    overnight = gross * r.overnight
    if overnight_now:
        init = max(init, overnight)
    return Requirement(initial=init, maintenance=maint, overnight=overnight, gross=gross)


def buying_power(account_type: str, available_funds: float, cash: float) -> float:
    """IB's BuyingPower (USD): a cash account its cash (never negative); a Reg T margin account 4 x AvailableFunds
    (IB's formula, also after the 15:50 check: what may be held overnight is what a what-if order tells); Portfolio
    Margin AvailableFunds over its 15 % rate."""
    r = rates_for(account_type)
    if account_type == "reg_t_cash":
        return max(min(cash, available_funds), 0.0)
    return max(available_funds, 0.0) / r.initial_long
