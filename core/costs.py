"""Trading costs: Interactive Brokers' fixed commission, slippage per fill, and margin interest on borrowed cash.

- **Commission**: shared/reference/strategies.md ("Commission as IB's fixed pricing: 0.005 USD a share, at
  least 1.00 USD, at most 1 % of the trade value"). The defaults equal the settings `commission_per_share`,
  `commission_min` and `commission_max_fraction`; callers pass the settings' values.
- **Slippage** (:func:`slipped`): every simulated fill moves against the trade by a fraction of the price
  (setting `backtest_slippage_fraction`, default 5 bp = 0.0005: about the half spread plus impact of a market
  or stop-market order in SMH / AAPL / TSLA; a stop fills at the worse of its price and the open, then slips).
- **Margin interest** (:class:`MarginInterest`): IB charges interest daily on a debit (borrowed) cash balance at
  the reference benchmark rate (BM) plus a spread that falls with the size of the loan, blended over tiers, with
  a 360-day year for USD. Source: IB's published "Margin Rates" page (interactivebrokers.com, trading/margin-rates,
  IBKR Pro, USD): 0 to 100,000 BM + 1.5 %; 100,000 to 1,000,000 BM + 1 %; 1,000,000 to 50,000,000 BM + 0.75 %;
  50,000,000 to 200,000,000 BM + 0.5 %; above, BM + 0.5 % (plus a 1 % surcharge on large loans, not modelled);
  interest examples there: ``balance x (BM + spread) / 360`` a day. The benchmark moves with the Fed funds rate;
  the default 4.58 % is the one implied by the page's stored quote (Tier I 6.080 % = BM + 1.5 %); the setting
  `margin_benchmark_rate` changes it. A constant rate over a backtest is a simplification (2022 had lower rates,
  2023-2024 higher).

Pure functions: no clock, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.validation import require_finite, require_finite_non_negative, require_positive, require_whole_shares

if TYPE_CHECKING:  # pragma: no cover
    from core.settings import Settings

__all__ = ["IB_USD_MARGIN_TIERS", "CommissionSchedule", "MarginInterest", "ib_fixed_commission", "slipped"]

IB_USD_MARGIN_TIERS: tuple[tuple[float, float], ...] = (
    (100_000.0, 0.015),
    (1_000_000.0, 0.01),
    (50_000_000.0, 0.0075),
    (200_000_000.0, 0.005),
)
"""IBKR Pro USD margin loan tiers: (upper bound of the tier in USD borrowed, spread over the benchmark, fraction);
above the last bound the last spread applies."""


def slipped(price: float, side: str, slippage_fraction: float) -> float:
    """The fill price of a simulated order after adverse slippage: a buy pays ``price * (1 + s)``, a sell gets
    ``price * (1 - s)``.

    Args:
        price: the reference price, USD a share (> 0): the decision price, the open, or a stop's own fill price.
        side: 'BUY' or 'SELL'.
        slippage_fraction: s, a fraction of the price in [0, 1) (0.0005 = 5 bp).

    Raises:
        ValueError: a bad price, side or fraction.
    """
    p = require_positive("price", price)
    s = require_finite_non_negative("slippage_fraction", slippage_fraction)
    if s >= 1:
        raise ValueError(f"slippage_fraction must be < 1, got {s!r}")
    if side == "BUY":
        return p * (1.0 + s)
    if side == "SELL":
        return p * (1.0 - s)
    raise ValueError(f"side must be 'BUY' or 'SELL', got {side!r}")



def ib_fixed_commission(
    shares: int,
    price: float,
    *,
    per_share: float = 0.005,
    minimum: float = 1.00,
    max_fraction: float = 0.01,
) -> float:
    """IB fixed-pricing commission for one order, USD.

    `commission = min(max(per_share * |shares|, minimum), max_fraction * |shares| * price)`:
    0.005 USD a share, at least 1.00 USD an order, at most 1 % of the trade value. When 1 % of the trade value is
    below the minimum (a tiny order), the cap wins, as at IB (1 share at 50 USD pays 0.50 USD).

    Args:
        shares: shares in the order (a buy or a sell; the sign is ignored, 0 is refused).
        price: fill price, USD a share (> 0).
        per_share, minimum, max_fraction: the schedule (USD a share, USD an order, fraction of trade value).

    Returns:
        The commission in USD (>= 0).

    Raises:
        ValueError: `shares` is 0 or not an integer, `price` is NaN or not > 0, or a schedule value is negative/NaN.
    """
    q = abs(require_whole_shares("shares", shares))
    if q == 0:
        raise ValueError("shares must not be 0: no order, no commission")
    p = require_positive("price", price)
    per_share = require_finite_non_negative("per_share", per_share)
    minimum = require_finite_non_negative("minimum", minimum)
    max_fraction = require_finite_non_negative("max_fraction", max_fraction)
    return min(max(per_share * q, minimum), max_fraction * q * p)


@dataclass(frozen=True, slots=True)
class CommissionSchedule:
    """IB fixed pricing: USD a share, minimum USD an order, maximum as a fraction of the trade value."""

    per_share: float = 0.005
    minimum: float = 1.00
    max_fraction: float = 0.01

    def __post_init__(self) -> None:
        require_finite_non_negative("per_share", self.per_share)
        require_finite_non_negative("minimum", self.minimum)
        require_finite_non_negative("max_fraction", self.max_fraction)

    @classmethod
    def from_settings(cls, settings: Settings) -> CommissionSchedule:
        """The schedule of TRADEFLOW_COMMISSION_PER_SHARE / _MIN / _MAX_FRACTION."""
        return cls(settings.commission_per_share, settings.commission_min, settings.commission_max_fraction)

    def __call__(self, shares: int, price: float) -> float:
        """The commission for one order of `shares` at `price`, USD (see :func:`ib_fixed_commission`)."""
        return ib_fixed_commission(
            shares, price, per_share=self.per_share, minimum=self.minimum, max_fraction=self.max_fraction
        )


@dataclass(frozen=True, slots=True)
class MarginInterest:
    """IB's interest on a debit cash balance: benchmark rate plus the tiered spread, blended, 360-day year.

    Attributes:
        benchmark_rate: the reference benchmark (annual, fraction; 0.0458 = 4.58 %); below 0 counts as 0, as at IB.
        tiers: (upper bound of the tier in USD borrowed, spread, fraction), ascending (:data:`IB_USD_MARGIN_TIERS`).
        day_count: days in the interest year (360 for USD at IB).
    """

    benchmark_rate: float = 0.0458
    tiers: tuple[tuple[float, float], ...] = IB_USD_MARGIN_TIERS
    day_count: float = 360.0

    def __post_init__(self) -> None:
        require_finite("benchmark_rate", self.benchmark_rate)
        require_positive("day_count", self.day_count)
        bounds = [b for b, _ in self.tiers]
        if not self.tiers or bounds != sorted(bounds) or any(s < 0 or s != s for _, s in self.tiers):
            raise ValueError(f"margin tiers must be ascending (bound, spread >= 0) pairs, got {self.tiers!r}")

    @classmethod
    def from_settings(cls, settings: Settings) -> MarginInterest:
        """TRADEFLOW_MARGIN_BENCHMARK_RATE and TRADEFLOW_MARGIN_SPREAD_TIERS."""
        tiers = tuple((float(b), float(s)) for b, s in settings.margin_spread_tiers)
        return cls(settings.margin_benchmark_rate, tiers)

    def annual_rate(self, borrowed_usd: float) -> float:
        """The blended annual rate on a loan of ``borrowed_usd`` (fraction; the benchmark when nothing is borrowed)."""
        b = require_finite_non_negative("borrowed_usd", borrowed_usd)
        if b == 0:
            return max(self.benchmark_rate, 0.0) + self.tiers[0][1]
        return self.interest(b, self.day_count) / b

    def interest(self, borrowed_usd: float, days: float) -> float:
        """Interest in USD on ``borrowed_usd`` (>= 0, the debit cash balance) held for ``days`` calendar days.

        ``sum over tiers (part of the loan in the tier) * (max(BM, 0) + tier spread) * days / day_count``.

        Raises:
            ValueError: a negative or NaN balance or day count.
        """
        b = require_finite_non_negative("borrowed_usd", borrowed_usd)
        d = require_finite_non_negative("days", days)
        bm = max(self.benchmark_rate, 0.0)
        total, lower = 0.0, 0.0
        for upper, spread in self.tiers:
            part = min(b, upper) - lower
            if part <= 0:
                break
            total += part * (bm + spread)
            lower = upper
        if b > lower:  # above the last bound: the last tier's spread
            total += (b - lower) * (bm + self.tiers[-1][1])
        return total * d / self.day_count
