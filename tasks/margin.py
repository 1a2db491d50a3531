"""The margin check before an entry: IB's what-if of the order, and the size the margin allows
(`core.strategies.margin.fit_to_margin`). The EMA and the MTF entries call it before journaling their decision, so
the cap and the what-if numbers are in the decision's inputs; the signals strategy calls it just before it sends a
bracket's entry (after a reversal's close has filled, so the what-if sees the account the entry meets)."""

from __future__ import annotations

import logging

from core.broker import Broker, OrderRequest
from core.strategies.margin import MarginFit, fit_to_margin

log = logging.getLogger("tradeflow.margin")


def fit_entry(broker: Broker, symbol: str, shares: int, order_ref: str, action: str = "BUY") -> MarginFit:
    """Ask IB what `action` (BUY, or SELL for a short entry) of `shares` of `symbol` at market does to margin
    (nothing is placed) and return the size the account allows. Raises the broker's errors (an entry is never
    sized from an unchecked margin)."""
    impact = broker.what_if(OrderRequest(symbol=symbol, action=action, quantity=int(shares), order_ref=order_ref))
    fit = fit_to_margin(int(shares), impact)
    (log.warning if fit.capped else log.info)("%s %s: %s", symbol, order_ref, fit.reason)
    return fit
