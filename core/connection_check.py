"""The checks of `tradeflow validate-connection`: can the system talk to whatever IBKR_HOST/IBKR_PORT point at?

Checks, in order: connection, market data (a current SMH price, delayed data allowed), historical data (five
daily SMH bars), account data (NetLiquidation, AvailableFunds, BuyingPower, cash), positions; with the order
test, a 1-share limit BUY of SMH at half the current price, placed and cancelled, and a what-if order (nothing
placed) of the EMA entry at its default leverage: IB's initial margin after it against equity with loan says
whether the account type carries that leverage overnight (Reg T margin allows about 2x after IB's 15:50 check;
the EMA's 3-3.75x needs Portfolio Margin). A failed connection fails every later check without trying it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from core.broker import Broker, BrokerError, OrderRequest


@dataclass(frozen=True)
class CheckResult:
    """One check: `ok`, how long it took (seconds), and what it found or why it failed."""

    name: str
    ok: bool
    seconds: float
    detail: str


def _run(name: str, fn: Callable[[], str]) -> CheckResult:
    t0 = time.monotonic()
    try:
        detail = fn()
        ok = True
    except (BrokerError, ValueError, OSError) as exc:
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    return CheckResult(name, ok, time.monotonic() - t0, detail)


def run_checks(broker: Broker, order_test: bool = False, symbol: str = "SMH", leverage: float = 3.0
               ) -> list[CheckResult]:
    """Run the checks against `broker` (not yet connected); disconnects at the end. `leverage`: the multiple of
    NetLiquidation the what-if check buys (the EMA's default leverage)."""
    results = [_run("connection", lambda: (broker.connect(), f"account {broker.account}")[1])]
    names = ["market data", "historical data", "account data", "positions"] + (["order test", "what-if"]
                                                                                if order_test else [])
    if not results[0].ok:
        return results + [CheckResult(n, False, 0.0, "skipped: no connection") for n in names]
    try:
        def market() -> str:
            q = broker.current_price(symbol)
            return f"{symbol} {q.price:.2f} USD{' (delayed)' if q.delayed else ''}"

        def history() -> str:
            df = broker.historical_bars(symbol, "1 day", "5 D")
            if df.empty:
                raise ValueError("no bars returned")
            return f"{len(df)} daily bars of {symbol}, last {df.index[-1].date()} close {df['close'].iloc[-1]:.2f}"

        def account() -> str:
            v = broker.account_values()
            return (f"NetLiquidation {v.net_liquidation:,.2f} USD, AvailableFunds {v.available_funds:,.2f}, "
                    f"BuyingPower {v.buying_power:,.2f}, cash {v.cash:,.2f}")

        def positions() -> str:
            ps = broker.positions()
            return ", ".join(f"{p.symbol} {p.quantity:g}" for p in ps) or "no positions"

        def order() -> str:
            price = broker.current_price(symbol).price
            limit = round(price * 0.5, 2)
            info = broker.place_order(OrderRequest(symbol, "BUY", 1, f"validate-{uuid.uuid4().hex[:12]}", "LMT",
                                                   limit_price=limit))
            if info.is_done:
                raise ValueError(f"the far limit order ended {info.status} instead of resting")
            done = broker.cancel_order(info.order_id)
            if done.status not in ("Cancelled", "ApiCancelled"):
                raise ValueError(f"cancel ended {done.status}")
            return f"1 {symbol} LMT {limit:.2f} placed as order {info.order_id} and cancelled"

        def what_if() -> str:
            price = broker.current_price(symbol).price
            nlv = broker.account_values().net_liquidation
            shares = int(nlv * leverage / price)
            if shares <= 0:
                raise ValueError(f"NetLiquidation {nlv:,.2f} USD buys no {symbol} share at {leverage:g}x")
            m = broker.what_if(OrderRequest(symbol, "BUY", shares, f"validate-whatif-{uuid.uuid4().hex[:8]}"))
            verdict = ("fits" if m.fits else "does NOT fit: IB would refuse it (Reg T allows about 2x overnight; "
                       "the EMA's leverage needs Portfolio Margin)")
            return (f"{shares} {symbol} ({leverage:g}x NetLiquidation) {verdict}: initial margin after "
                    f"{m.init_margin_after:,.2f} USD, equity with loan after {m.equity_with_loan_after:,.2f} USD, "
                    f"maintenance after {m.maint_margin_after:,.2f} USD; nothing placed")

        for name, fn in zip(names, [market, history, account, positions, order, what_if]):
            results.append(_run(name, fn))
    finally:
        broker.disconnect()
    return results
