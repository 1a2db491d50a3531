"""Trading costs: Interactive Brokers' fixed commission for US stocks and ETFs.

Source of the rule: shared/reference/strategies.md ("Commission as IB's fixed pricing: 0.005 USD a share, at
least 1.00 USD, at most 1 % of the trade value"). The defaults equal the settings `commission_per_share`,
`commission_min` and `commission_max_fraction`; callers pass the settings' values.

Pure functions: no clock, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from core.validation import require_finite_non_negative, require_positive, require_whole_shares

if TYPE_CHECKING:  # pragma: no cover
    from core.settings import Settings

__all__ = ["CommissionSchedule", "ib_fixed_commission"]


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
