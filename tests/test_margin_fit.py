"""`core.strategies.margin.fit_to_margin`: an entry cut to what IB's what-if says the margin allows."""

from __future__ import annotations

import math

import pytest

from core.broker import MarginImpact
from core.strategies.margin import fit_to_margin


def impact(shares: int, price: float, rate: float, equity: float = 1_000_000.0, held_margin: float = 0.0,
           fee: float = 0.0) -> MarginImpact:
    change = shares * price * rate
    return MarginImpact(held_margin, change, held_margin + change, held_margin, change, held_margin + change,
                        equity, -fee, equity - fee, fee)


def test_reg_t_overnight_3x_is_cut_to_about_2x():
    fit = fit_to_margin(8_000, impact(8_000, 375.0, 0.5))  # 3x of 1M at 375 USD; Reg T 50 %
    assert fit.capped and fit.allowed == fit.shares == math.floor(1_000_000 * 0.995 / (375.0 * 0.5))
    assert fit.shares * 375.0 <= 2 * 1_000_000
    assert fit.record["whatif_init_margin_after"] == 8_000 * 375.0 * 0.5 and fit.record["margin_capped"]
    assert "sized down from 8000 to 5306 shares" in fit.reason


def test_portfolio_margin_3x_goes_through():
    fit = fit_to_margin(8_000, impact(8_000, 375.0, 0.15))
    assert not fit.capped and fit.shares == 8_000 and fit.allowed > 8_000


def test_margin_already_used_leaves_less_room():
    fit = fit_to_margin(100, impact(100, 100.0, 0.5, equity=10_000.0, held_margin=9_000.0))
    assert fit.shares == math.floor((10_000 - 9_000 - 50) / 50.0)


def test_nothing_fits_gives_zero():
    assert fit_to_margin(10, impact(10, 100.0, 1.0, equity=1_000.0, held_margin=1_000.0)).shares == 0


@pytest.mark.parametrize("bad", [0, -5, 2.5])
def test_bad_requested_shares(bad):
    with pytest.raises(ValueError, match="requested"):
        fit_to_margin(bad, impact(10, 100.0, 0.5))


def test_nan_margin_is_refused():
    m = impact(10, 100.0, 0.5)
    bad = MarginImpact(**{**m.as_record(), "init_margin_after": float("nan")})
    with pytest.raises(ValueError, match="init_margin_after"):
        fit_to_margin(10, bad)
