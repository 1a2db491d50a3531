"""The paper exchange's account, orders and matching engine, and the state file that keeps them.

Everything here is plain, single-threaded Python driven by the server (on its event loop): `place`, `cancel`
and `advance(now)` return lists of events the server turns into TWS messages.

Fill rules (all at bar granularity; the bars are the symbol's "fine" series of market_data, 5-minute bars where
they exist, else hourly, else daily). An order is eligible from the first bar that STARTS at or after the
exchange clock when it was placed. For each eligible bar, in time order, once the clock has reached it:
- at the bar's start (its open is known then):
  - MKT fills at the bar's open.
  - LMT BUY fills at the open if open <= limit; LMT SELL if open >= limit (a marketable limit gets the open).
  - STP BUY triggers and fills at the open if open >= stop; STP SELL if open <= stop (a gap fills at the open).
- once the bar has ended (its range is known then), if not filled at the open:
  - LMT BUY fills at the limit if low <= limit; LMT SELL if high >= limit.
  - STP BUY fills at the stop if high >= stop; STP SELL if low <= stop.
  The fill time is the bar's end, so nothing is known before the clock reaches it.
- A DAY order that is still working when its session closes (the end of the last bar of the session of its
  first eligible bar) expires: it ends Cancelled. GTC orders work until filled or cancelled.
- The whole remaining quantity fills at once, unless the partial-fill fault is armed: then that fill takes a
  fraction of the remaining quantity and the rest stays working from the next bar on.
Commission is IB's fixed pricing: 0.005 USD a share, at least 1.00 USD, at most 1 % of the trade value, computed
on the order's cumulative shares and value (each partial fill is charged the increase).
Margin: gross position value (|shares| x last price, summed) may reach `max_leverage` x net liquidation. An
order that would raise gross value beyond that (valued at the last price, or the limit/stop price if higher)
is rejected with IB error 201. Orders that only reduce a position are always accepted. Account values:
NetLiquidation = cash + sum(shares x last price); InitMarginReq = MaintMarginReq = gross / max_leverage;
AvailableFunds = ExcessLiquidity = NetLiquidation - InitMarginReq; BuyingPower = AvailableFunds x max_leverage.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from core.order_status import OrderStatus

from .market_data import NY, MarketData, UnknownSymbolError, ny_date_of

TERMINAL = OrderStatus.DONE


def commission_for(shares: float, price: float, per_share: float = 0.005, minimum: float = 1.0,
                   max_fraction: float = 0.01) -> float:
    """IB fixed pricing for an order of `shares` at `price` (USD): max(minimum, shares x per_share), capped at
    max_fraction of the trade value. Returns USD rounded to a cent's hundredth."""
    if shares <= 0:
        return 0.0
    fee = max(minimum, abs(shares) * per_share)
    fee = min(fee, max_fraction * abs(shares) * price)
    return round(fee, 4)


@dataclass
class Order:
    """An order at the exchange. Prices USD, quantities shares, times epoch seconds."""

    perm_id: int
    order_id: int
    client_id: int
    symbol: str
    action: str  # BUY / SELL
    quantity: float
    order_type: str  # MKT / LMT / STP
    lmt_price: float | None
    aux_price: float | None
    tif: str
    account: str
    order_ref: str
    outside_rth: bool
    placed_at: int
    active_from: int
    status: str = "Submitted"
    filled: float = 0.0
    avg_fill_price: float = 0.0
    last_fill_price: float = 0.0
    commission: float = 0.0
    completed_at: int | None = None
    completed_status: str = ""

    @property
    def remaining(self) -> float:
        return self.quantity - self.filled

    @property
    def is_open(self) -> bool:
        return self.status not in TERMINAL


@dataclass
class Execution:
    """One fill. `side` is BOT or SLD; `time` epoch seconds; commission and realized P&L in USD."""

    exec_id: str
    perm_id: int
    order_id: int
    client_id: int
    symbol: str
    side: str
    shares: float
    price: float
    time: int
    account: str
    order_ref: str
    cum_qty: float
    avg_price: float
    commission: float
    realized_pnl: float


@dataclass
class Position:
    """Shares held (negative when short) and the average cost per share including commissions (USD)."""

    quantity: float = 0.0
    avg_cost: float = 0.0
    realized_pnl: float = 0.0


@dataclass
class Faults:
    """Faults armed through the admin interface."""

    reject_next: dict | None = None  # {"code": 201, "message": "..."}
    partial_fraction: float | None = None  # next fill takes this fraction of the remaining quantity
    reply_delay: float = 0.0  # seconds added before each request is handled
    no_data: dict[str, set[str]] = field(default_factory=dict)  # symbol -> {"quotes", "history"} refused


class OrderError(Exception):
    """An order the exchange refuses; `code` is the IB error code sent to the client."""

    def __init__(self, code: int, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class EngineConfig:
    """Account parameters: starting cash (USD), margin multiple, the paper account id, commission schedule."""

    account: str = "DU0000001"
    initial_cash: float = 1_000_000.0
    max_leverage: float = 4.0
    commission_per_share: float = 0.005
    commission_min: float = 1.0
    commission_max_fraction: float = 0.01


class Engine:
    """Account, orders, executions and matching. Not thread-safe: the server calls it from its loop only.

    `now` values are epoch seconds of the exchange clock. Methods that change state save the state file
    (when one is configured) before returning.
    """

    def __init__(self, market: MarketData, config: EngineConfig, state_file: Path | None = None):
        self.market = market
        self.config = config
        self.state_file = Path(state_file) if state_file else None
        self.cash = config.initial_cash
        self.positions: dict[str, Position] = {}
        self.orders: dict[int, Order] = {}  # by permId
        self.executions: list[Execution] = []
        self.next_order_id = 1
        self.next_perm_id = 1_000_001
        self.exec_seq = 0
        self.clock: int | None = None  # last clock the engine saw (persisted)
        self.faults = Faults()
        self.expired: list[Order] = []
        if self.state_file and self.state_file.exists():
            self._load()

    # --- persistence ---------------------------------------------------------------------------------------

    def _load(self) -> None:
        assert self.state_file is not None
        data = json.loads(self.state_file.read_text())
        self.cash = data["cash"]
        self.positions = {k: Position(**v) for k, v in data["positions"].items()}
        self.orders = {o["perm_id"]: Order(**o) for o in data["orders"]}
        self.executions = [Execution(**e) for e in data["executions"]]
        self.next_order_id = data["next_order_id"]
        self.next_perm_id = data["next_perm_id"]
        self.exec_seq = data["exec_seq"]
        self.clock = data.get("clock")
        if data.get("account"):
            self.config.account = data["account"]

    def save(self) -> None:
        """Write the state file atomically (temp file + rename)."""
        if not self.state_file:
            return
        data = {
            "version": 1, "account": self.config.account, "cash": self.cash, "clock": self.clock,
            "positions": {k: asdict(v) for k, v in self.positions.items()},
            "orders": [asdict(o) for o in self.orders.values()],
            "executions": [asdict(e) for e in self.executions],
            "next_order_id": self.next_order_id, "next_perm_id": self.next_perm_id, "exec_seq": self.exec_seq,
        }
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.state_file.parent, prefix=".state-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1)
        os.replace(tmp, self.state_file)

    # --- valuation -----------------------------------------------------------------------------------------

    def price(self, symbol: str, now: int) -> float:
        p = self.market.last_price(symbol, now)
        if p is None:
            pos = self.positions.get(symbol)
            return pos.avg_cost if pos else 0.0
        return p

    def account_values(self, now: int) -> dict[str, float]:
        """USD values: NetLiquidation, TotalCashValue, GrossPositionValue, InitMarginReq, MaintMarginReq,
        AvailableFunds, ExcessLiquidity, BuyingPower, EquityWithLoanValue, UnrealizedPnL, RealizedPnL."""
        gross = 0.0
        market_value = 0.0
        unrealized = 0.0
        realized = 0.0
        for sym, pos in self.positions.items():
            realized += pos.realized_pnl
            if pos.quantity == 0:
                continue
            p = self.price(sym, now)
            market_value += pos.quantity * p
            gross += abs(pos.quantity * p)
            unrealized += pos.quantity * (p - pos.avg_cost)
        nlv = self.cash + market_value
        margin = gross / self.config.max_leverage
        available = nlv - margin
        return {
            "NetLiquidation": nlv, "TotalCashValue": self.cash, "CashBalance": self.cash,
            "GrossPositionValue": gross, "EquityWithLoanValue": nlv, "InitMarginReq": margin,
            "MaintMarginReq": margin, "AvailableFunds": available, "ExcessLiquidity": available,
            "BuyingPower": max(available, 0.0) * self.config.max_leverage, "UnrealizedPnL": unrealized,
            "RealizedPnL": realized, "StockMarketValue": market_value,
        }

    # --- orders ----------------------------------------------------------------------------------------------

    def order_by_client(self, client_id: int, order_id: int) -> Order | None:
        for o in self.orders.values():
            if o.client_id == client_id and o.order_id == order_id:
                return o
        return None

    def open_orders(self, client_id: int | None = None) -> list[Order]:
        return [o for o in self.orders.values() if o.is_open and (client_id is None or o.client_id == client_id)]

    def completed_orders(self) -> list[Order]:
        return [o for o in self.orders.values() if not o.is_open]

    def note_order_id(self, order_id: int) -> None:
        self.next_order_id = max(self.next_order_id, order_id + 1)

    def place(self, *, client_id: int, order_id: int, symbol: str, action: str, quantity: float,
              order_type: str, lmt_price: float | None, aux_price: float | None, tif: str, account: str,
              order_ref: str, outside_rth: bool, now: int) -> Order:
        """Accept a new order or modify an open one (same client and order id). Raises OrderError."""
        self.note_order_id(order_id)
        self.clock = now
        if self.faults.reject_next:
            fault, self.faults.reject_next = self.faults.reject_next, None
            raise OrderError(int(fault.get("code", 201)),
                             str(fault.get("message", "Order rejected - reason: rejected by fault injection")))
        if not self.market.has(symbol):
            raise OrderError(200, "No security definition has been found for the request")
        if action not in ("BUY", "SELL"):
            raise OrderError(201, f"Order rejected - reason: invalid action {action!r}")
        if not (quantity > 0 and float(quantity).is_integer()):
            raise OrderError(201, "Order rejected - reason: the quantity must be a positive whole number of shares")
        if order_type not in ("MKT", "LMT", "STP"):
            raise OrderError(201, f"Order rejected - reason: order type {order_type} is not supported "
                                  "by the paper exchange (MKT, LMT, STP)")
        if order_type == "LMT" and not lmt_price:
            raise OrderError(201, "Order rejected - reason: a limit order needs a limit price")
        if order_type == "STP" and not aux_price:
            raise OrderError(201, "Order rejected - reason: a stop order needs a stop price")
        if account and account != self.config.account:
            raise OrderError(201, f"Order rejected - reason: unknown account {account}")
        existing = self.order_by_client(client_id, order_id)
        if existing is not None and not existing.is_open:
            raise OrderError(103, "Duplicate order id")
        self._check_margin(symbol, action, quantity - (existing.filled if existing else 0), order_type,
                           lmt_price, aux_price, now)
        if existing is not None:  # modify
            existing.quantity, existing.lmt_price, existing.aux_price = quantity, lmt_price, aux_price
            existing.order_type, existing.tif = order_type, tif
            self.save()
            return existing
        o = Order(perm_id=self.next_perm_id, order_id=order_id, client_id=client_id, symbol=symbol.upper(),
                  action=action, quantity=float(quantity), order_type=order_type, lmt_price=lmt_price,
                  aux_price=aux_price, tif=tif, account=self.config.account, order_ref=order_ref,
                  outside_rth=outside_rth, placed_at=now, active_from=now)
        self.next_perm_id += 1
        self.orders[o.perm_id] = o
        self.save()
        return o

    def _check_margin(self, symbol: str, action: str, qty: float, order_type: str, lmt: float | None,
                      aux: float | None, now: int) -> None:
        sign = 1 if action == "BUY" else -1
        pos = self.positions.get(symbol.upper(), Position())
        after = pos.quantity + sign * qty
        if abs(after) <= abs(pos.quantity) and after * pos.quantity >= 0:
            return  # only reduces
        p = self.price(symbol.upper(), now)
        ref = max(p, lmt or 0.0, aux or 0.0)
        values = self.account_values(now)
        gross_after = values["GrossPositionValue"] - abs(pos.quantity * p) + abs(after * ref)
        limit = values["NetLiquidation"] * self.config.max_leverage
        if gross_after > limit + 1e-6:
            raise OrderError(
                201, "Order rejected - reason:YOUR ORDER IS NOT ACCEPTED. IN ORDER TO OBTAIN THE DESIRED POSITION "
                     f"YOUR GROSS POSITION VALUE [{gross_after:,.2f} USD] MUST NOT EXCEED "
                     f"{self.config.max_leverage:g} X NET LIQUIDATION [{limit:,.2f} USD] (buying power "
                     f"{values['BuyingPower']:,.2f} USD)")

    def cancel(self, client_id: int, order_id: int, now: int) -> Order:
        """Cancel an open order. Raises OrderError 10147 (not found) or 10148 (already done)."""
        o = self.order_by_client(client_id, order_id)
        if o is None:
            raise OrderError(10147, f"OrderId {order_id} that needs to be cancelled is not found.")
        if not o.is_open:
            raise OrderError(10148, f"OrderId {order_id} that needs to be cancelled cannot be cancelled, "
                                    f"state: {o.status}.")
        o.status = "Cancelled"
        o.completed_at = now
        o.completed_status = "Cancelled by API"
        self.clock = now
        self.save()
        return o

    def reject(self, o: Order, now: int) -> None:
        o.status = "Cancelled"
        o.completed_at = now
        o.completed_status = "Rejected"
        self.save()

    # --- matching --------------------------------------------------------------------------------------------

    def advance(self, now: int) -> list[tuple[Order, Execution]]:
        """Fill what the clock `now` allows (rules in the module docstring); returns the fills in time order."""
        self.clock = now
        fills: list[tuple[Order, Execution]] = []
        for o in sorted(self.open_orders(), key=lambda o: o.perm_id):
            fills.extend(self._match(o, now))
        fills.sort(key=lambda f: (f[1].time, f[1].exec_id))
        if fills:
            self.save()
        return fills

    def _match(self, o: Order, now: int) -> list[tuple[Order, Execution]]:
        try:
            s = self.market.get(o.symbol).fine
        except UnknownSymbolError:
            return []
        out = []
        day_end = self._day_end(o, s) if o.tif == "DAY" else None
        i = int(np.searchsorted(s.start, o.active_from, side="left"))
        while o.is_open and i < len(s) and s.start[i] <= now and (day_end is None or s.start[i] < day_end):
            op, hi, lo, end = float(s.open[i]), float(s.high[i]), float(s.low[i]), int(s.end[i])
            buy = o.action == "BUY"
            px = None
            when = int(s.start[i])
            if o.order_type == "MKT":
                px = op
            elif o.order_type == "LMT":
                lim = float(o.lmt_price or 0)
                if (buy and op <= lim) or (not buy and op >= lim):
                    px = op
                elif end <= now and ((buy and lo <= lim) or (not buy and hi >= lim)):
                    px, when = lim, end
            elif o.order_type == "STP":
                stop = float(o.aux_price or 0)
                if (buy and op >= stop) or (not buy and op <= stop):
                    px = op
                elif end <= now and ((buy and hi >= stop) or (not buy and lo <= stop)):
                    px, when = stop, end
            if px is None:
                if end > now:
                    break  # wait for the bar's range
                i += 1
                continue
            qty = o.remaining
            if self.faults.partial_fraction is not None:
                qty = max(1.0, math.floor(o.remaining * self.faults.partial_fraction))
                self.faults.partial_fraction = None
            out.append((o, self._fill(o, qty, px, when)))
            o.active_from = end  # the rest works from the next bar on
            i += 1
        if o.is_open and day_end is not None and now >= day_end:
            o.status = "Cancelled"
            o.completed_at = day_end
            o.completed_status = "Expired at the session's close (DAY)"
            self.expired.append(o)
            self.save()
        return out

    @staticmethod
    def _day_end(o: Order, s) -> int | None:
        """End of the session a DAY order works in: that of the first bar starting at or after its placing."""
        i = int(np.searchsorted(s.start, o.placed_at, side="left"))
        if i >= len(s):
            return None
        j = int(np.searchsorted(s.session, s.session[i], side="right")) - 1
        return int(s.end[j])

    def pop_expired(self) -> list[Order]:
        """DAY orders that expired since the last call (the server tells their clients)."""
        out, self.expired = self.expired, []
        return out

    def _fill(self, o: Order, qty: float, px: float, when: int) -> Execution:
        c = self.config
        prev_value = o.avg_fill_price * o.filled
        cum = o.filled + qty
        cum_value = prev_value + qty * px
        total_fee = commission_for(cum, cum_value / cum, c.commission_per_share, c.commission_min,
                                   c.commission_max_fraction)
        fee = round(total_fee - o.commission, 4)
        o.commission = total_fee
        o.filled = cum
        o.avg_fill_price = cum_value / cum
        o.last_fill_price = px
        if o.remaining <= 0:
            o.status = "Filled"
            o.completed_at = when
            o.completed_status = "Filled Size: %g" % o.filled
        sign = 1 if o.action == "BUY" else -1
        self.cash -= sign * qty * px + fee
        realized = self._apply_position(o.symbol, sign * qty, px, fee)
        self.exec_seq += 1
        day = ny_date_of(when).strftime("%Y%m%d")
        e = Execution(exec_id=f"0000e{o.perm_id:07d}.{day}.{self.exec_seq:04d}", perm_id=o.perm_id,
                      order_id=o.order_id, client_id=o.client_id, symbol=o.symbol,
                      side="BOT" if sign > 0 else "SLD", shares=qty, price=px, time=when, account=o.account,
                      order_ref=o.order_ref, cum_qty=cum, avg_price=o.avg_fill_price, commission=fee,
                      realized_pnl=realized)
        self.executions.append(e)
        return e

    def _apply_position(self, symbol: str, signed_qty: float, px: float, fee: float) -> float:
        """Update the position; returns the realized P&L of this fill (USD, after its commission)."""
        pos = self.positions.setdefault(symbol, Position())
        q0 = pos.quantity
        realized = 0.0
        if q0 == 0 or (q0 > 0) == (signed_qty > 0):  # open or add
            cost = pos.avg_cost * abs(q0) + abs(signed_qty) * px + fee
            pos.quantity = q0 + signed_qty
            pos.avg_cost = cost / abs(pos.quantity)
        else:
            closing = min(abs(signed_qty), abs(q0))
            direction = 1 if q0 > 0 else -1
            realized = (px - pos.avg_cost) * closing * direction - fee
            pos.quantity = q0 + signed_qty
            if pos.quantity == 0:
                pos.avg_cost = 0.0
            elif (pos.quantity > 0) != (q0 > 0):  # flipped: the rest opens at px
                pos.avg_cost = px
            pos.realized_pnl += realized
        return realized

    # --- queries ---------------------------------------------------------------------------------------------

    def executions_on(self, now: int) -> list[Execution]:
        """Executions on the America/New_York calendar day of `now` (what reqExecutions returns)."""
        day = ny_date_of(now)
        return [e for e in self.executions if ny_date_of(e.time) == day and e.time <= now]


def exec_time_str(epoch: int) -> str:
    """'YYYYMMDD HH:MM:SS America/New_York' as TWS writes execution times."""
    return datetime.fromtimestamp(epoch, NY).strftime("%Y%m%d %H:%M:%S") + " America/New_York"
