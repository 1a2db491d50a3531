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
- Time in force: DAY expires at the close of the session it first works in; GTC works until filled or cancelled;
  GTD until `goodTillDate`; IOC and FOK are matched once, at the price of the moment they become active (the
  open of the bar in progress, or the bar that starts then), and cancelled if not marketable (the whole quantity
  always fills, so FOK and IOC differ only with the partial-fill fault: FOK then fills nothing); OPG works only
  at the open of the next session (MKT or LMT), then is cancelled.
- `outsideRth`: the data are regular-hours bars, so an order never fills outside RTH; a MKT order with
  outsideRth gets IB's warning 2109 (the attribute is ignored) and works as usual.
- The whole remaining quantity fills at once, unless the partial-fill fault is armed: then that fill takes a
  fraction of the remaining quantity and the rest stays working from the next bar on.
- Fills across orders happen in time order (the earliest possible fill of all working orders first), so an OCA
  sibling or a bracket child sees what happened before it.
Linked orders, as IB:
- `transmit=False` holds an order at the exchange (PreSubmitted, not working) until an order of its chain is
  sent with `transmit=True`: a child (`parentId`) transmits its parent and all the parent's children.
- A bracket's children (orders with `parentId`) are held (PreSubmitted) until the parent fills completely, then
  work from the bar after the fill; they are cancelled with the parent (cancel, expiry, rejection). The children
  of one parent are one OCA group (IB's bracket): a fill of one reduces the others, which are cancelled at 0.
- OCA groups (`ocaGroup`, `ocaType` echoed back): type 1 cancels the other working orders of the group when one
  fills; types 2 and 3 reduce their quantity by the filled shares (cancelled at 0). Type 0 is taken as 1.
Price checks: a negative or zero price, or one that is not a multiple of the contract's minTick (0.01), is
refused with IB error 110. Order types other than MKT/LMT/STP, combos, algos and conditions: IB error 201.
Commission is IB's fixed pricing: 0.005 USD a share, at least 1.00 USD, at most 1 % of the trade value, computed
on the order's cumulative shares and value (each partial fill is charged the increase).
Margin: by account type, see `margin.py` (Reg T cash / Reg T margin / Portfolio Margin; initial, maintenance
and the Reg T end-of-day requirement, and the liquidation at the close). An opening order whose initial margin
after the trade (positions valued at the last price, the order at the larger of that and its limit/stop price)
exceeds equity with loan is rejected with IB error 201 and IB's text; orders that only reduce a position are
always accepted. A what-if order is never placed: `what_if` returns its margin impact.
Account values: NetLiquidation = EquityWithLoanValue = cash + sum(shares x last price); InitMarginReq,
MaintMarginReq and RegTMargin from margin.py; AvailableFunds = EquityWithLoan - InitMarginReq; ExcessLiquidity =
EquityWithLoan - MaintMarginReq; SMA = EquityWithLoan - RegTMargin; BuyingPower from margin.buying_power.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from zoneinfo import ZoneInfo
from pathlib import Path

import numpy as np

from core.calendar import session_on
from core.order_status import OrderStatus

from . import margin as M
from .market_data import NY, MarketData, UnknownSymbolError, ny_date_of

TERMINAL = OrderStatus.DONE
TIFS = ("DAY", "GTC", "IOC", "FOK", "OPG", "GTD")
MIN_TICK = 0.01
"""minTick of every contract the exchange serves (USD); prices must be multiples of it (IB error 110)."""
LIQUIDATION_REF = "IB liquidation"
ERR_110 = "The price does not conform to the minimum price variation for this contract."


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
    """An order at the exchange. Prices USD, quantities shares, times epoch seconds.

    `transmitted` False: held by `transmit=False` until its chain is transmitted. `parent_id`: the order id (same
    client) of a bracket's parent, 0 for none. `oca_group`/`oca_type`: IB's OCA group. `good_till`: GTD expiry.
    `session_from`: when the order first worked (its DAY session)."""

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
    parent_id: int = 0
    transmitted: bool = True
    oca_group: str = ""
    oca_type: int = 0
    good_till: int | None = None
    good_till_date: str = ""
    session_from: int | None = None

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
    liquidation: bool = False


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
    """Account parameters: the paper account id, starting cash (USD), account type (margin.ACCOUNT_TYPES:
    reg_t_cash, reg_t_margin, portfolio_margin), commission schedule."""

    account: str = "DU0000001"
    initial_cash: float = 1_000_000.0
    account_type: str = "portfolio_margin"
    commission_per_share: float = 0.005
    commission_min: float = 1.0
    commission_max_fraction: float = 0.01

    def __post_init__(self) -> None:
        M.rates_for(self.account_type)  # raises ValueError naming a bad account type


@dataclass(frozen=True)
class MarginImpact:
    """What an order does to margin (USD): before, change and after, for initial and maintenance margin and
    equity with loan, and its commission. `allowed` whether the exchange would accept it now; `warning` IB's
    text when not."""

    init_before: float
    maint_before: float
    equity_before: float
    init_after: float
    maint_after: float
    equity_after: float
    commission: float
    allowed: bool
    warning: str = ""


def parse_good_till(s: str) -> int:
    """goodTillDate 'YYYYMMDD HH:MM:SS [zone]' (no zone: America/New_York; 'UTC' or IB's 'YYYYMMDD-HH:MM:SS')
    as epoch seconds. Raises OrderError 201 naming the bad value."""
    text = (s or "").strip()
    try:
        if "-" in text[8:9]:
            return int(datetime.strptime(text, "%Y%m%d-%H:%M:%S").replace(tzinfo=timezone.utc).timestamp())
        parts = text.split()
        naive = datetime.strptime(" ".join(parts[:2]), "%Y%m%d %H:%M:%S")
        zone = parts[2] if len(parts) > 2 else "America/New_York"
        tz = timezone.utc if zone in ("UTC", "GMT") else ZoneInfo(zone)
        return int(naive.replace(tzinfo=tz).timestamp())
    except (ValueError, KeyError, IndexError) as exc:
        raise OrderError(201, f"Order rejected - reason:Invalid goodTillDate {s!r} (expected "
                              "'YYYYMMDD HH:MM:SS zone')") from exc


def _off_tick(price: float) -> bool:
    return abs(price / MIN_TICK - round(price / MIN_TICK)) > 1e-6


class Engine:
    """Account, orders, executions and matching. Not thread-safe: the server calls it from its loop only.

    `now` values are epoch seconds of the exchange clock. Methods that change state save the state file
    (when one is configured) before returning. Orders whose state changed without a fill of their own (expired,
    cancelled with a parent or an OCA sibling, reduced, activated) are collected for `pop_changed`.
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
        self.eod_checked: int = 0  # session (YYYYMMDD) whose close the overnight check has run for
        self.faults = Faults()
        self.changed: list[Order] = []
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
        self.eod_checked = data.get("eod_checked", 0)
        if data.get("account"):
            self.config.account = data["account"]

    def save(self) -> None:
        """Write the state file atomically (temp file + rename)."""
        if not self.state_file:
            return
        data = {
            "version": 2, "account": self.config.account, "cash": self.cash, "clock": self.clock,
            "positions": {k: asdict(v) for k, v in self.positions.items()},
            "orders": [asdict(o) for o in self.orders.values()],
            "executions": [asdict(e) for e in self.executions],
            "next_order_id": self.next_order_id, "next_perm_id": self.next_perm_id, "exec_seq": self.exec_seq,
            "eod_checked": self.eod_checked,
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

    @staticmethod
    def _session(now: int):
        return session_on(ny_date_of(now))

    def overnight_in_force(self, now: int) -> bool:
        """Whether the overnight (Reg T end-of-day) requirement applies at `now`: from the check before the
        close (15:50) until the next session's open (margin.py)."""
        s = self._session(now)
        if s is None:
            return True
        return not (s.open.timestamp() <= now < s.close.timestamp() - M.OVERNIGHT_CHECK_BEFORE_CLOSE)

    def _requirement(self, quantities: dict[str, float], prices: dict[str, float], now: int) -> M.Requirement:
        return M.requirement(self.config.account_type, [q * prices[s] for s, q in quantities.items() if q],
                             self.overnight_in_force(now))

    def account_values(self, now: int) -> dict[str, float]:
        """USD values: NetLiquidation, TotalCashValue, GrossPositionValue, EquityWithLoanValue, InitMarginReq,
        MaintMarginReq, RegTMargin, SMA, AvailableFunds, ExcessLiquidity, BuyingPower, UnrealizedPnL,
        RealizedPnL, StockMarketValue (margin rules in margin.py)."""
        market_value = unrealized = realized = 0.0
        quantities, prices = {}, {}
        for sym, pos in self.positions.items():
            realized += pos.realized_pnl
            if pos.quantity == 0:
                continue
            p = self.price(sym, now)
            quantities[sym], prices[sym] = pos.quantity, p
            market_value += pos.quantity * p
            unrealized += pos.quantity * (p - pos.avg_cost)
        req = self._requirement(quantities, prices, now)
        nlv = self.cash + market_value
        available = nlv - req.initial
        return {
            "NetLiquidation": nlv, "TotalCashValue": self.cash, "CashBalance": self.cash,
            "GrossPositionValue": req.gross, "EquityWithLoanValue": nlv, "InitMarginReq": req.initial,
            "MaintMarginReq": req.maintenance, "RegTMargin": req.overnight, "SMA": nlv - req.overnight,
            "AvailableFunds": available, "ExcessLiquidity": nlv - req.maintenance,
            "BuyingPower": M.buying_power(self.config.account_type, available, self.cash),
            "UnrealizedPnL": unrealized, "RealizedPnL": realized, "StockMarketValue": market_value,
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

    def children(self, o: Order) -> list[Order]:
        return [c for c in self.orders.values() if c.parent_id and c.parent_id == o.order_id
                and c.client_id == o.client_id and c is not o]

    def parent_of(self, o: Order) -> Order | None:
        return self.order_by_client(o.client_id, o.parent_id) if o.parent_id else None

    def is_working(self, o: Order) -> bool:
        """Transmitted, open, and (for a bracket child) its parent filled."""
        if not (o.is_open and o.transmitted):
            return False
        parent = self.parent_of(o)
        return parent is None or parent.status == "Filled"

    def note_order_id(self, order_id: int) -> None:
        self.next_order_id = max(self.next_order_id, order_id + 1)

    def _validate(self, *, symbol: str, action: str, quantity: float, order_type: str, lmt_price: float | None,
                  aux_price: float | None, tif: str, account: str, good_till_date: str,
                  unsupported: str = "") -> int | None:
        """Check an order as IB does; returns the GTD expiry (epoch seconds) or None. Raises OrderError."""
        if unsupported:
            raise OrderError(201, f"Order rejected - reason:{unsupported} are not supported by the paper exchange")
        if not self.market.has(symbol):
            raise OrderError(200, "No security definition has been found for the request")
        if action not in ("BUY", "SELL"):
            raise OrderError(201, f"Order rejected - reason:invalid action {action!r}")
        if not (quantity > 0 and float(quantity).is_integer()):
            raise OrderError(201, "Order rejected - reason:the quantity must be a positive whole number of shares")
        if order_type not in ("MKT", "LMT", "STP"):
            raise OrderError(201, f"Order rejected - reason:order type {order_type} is not supported "
                                  "by the paper exchange (MKT, LMT, STP)")
        if order_type == "LMT" and lmt_price is None:
            raise OrderError(201, "Order rejected - reason:a limit order needs a limit price")
        if order_type == "STP" and aux_price is None:
            raise OrderError(201, "Order rejected - reason:a stop order needs a stop price")
        for px, used in ((lmt_price, order_type == "LMT"), (aux_price, order_type == "STP")):
            if used and px is not None and (px <= 0 or _off_tick(px)):
                raise OrderError(110, ERR_110)
        if tif not in TIFS:
            raise OrderError(201, f"Order rejected - reason:Invalid time in force {tif!r} (DAY, GTC, IOC, FOK, "
                                  "OPG, GTD)")
        if tif == "OPG" and order_type == "STP":
            raise OrderError(201, "Order rejected - reason:OPG is for market and limit orders only")
        if account and account != self.config.account:
            raise OrderError(201, f"Order rejected - reason:unknown account {account}")
        if tif == "GTD":
            if not good_till_date:
                raise OrderError(201, "Order rejected - reason:a GTD order needs a goodTillDate")
            return parse_good_till(good_till_date)
        return None

    def place(self, *, client_id: int, order_id: int, symbol: str, action: str, quantity: float,
              order_type: str, lmt_price: float | None, aux_price: float | None, tif: str, account: str,
              order_ref: str, outside_rth: bool, now: int, parent_id: int = 0, transmit: bool = True,
              oca_group: str = "", oca_type: int = 0, good_till_date: str = "", unsupported: str = "") -> Order:
        """Accept a new order or modify an open one (same client and order id). Raises OrderError.

        A new bracket child (`parent_id`) needs its parent open at this client (a child already placed may be
        modified after its parent filled, as at IB); its margin is checked as if the parent had filled.
        `transmit=True` transmits the order's whole chain (module docstring)."""
        self.note_order_id(order_id)
        self.clock = now
        symbol = symbol.upper()
        if self.faults.reject_next:
            fault, self.faults.reject_next = self.faults.reject_next, None
            raise OrderError(int(fault.get("code", 201)),
                             str(fault.get("message", "Order rejected - reason: rejected by fault injection")))
        good_till = self._validate(symbol=symbol, action=action, quantity=quantity, order_type=order_type,
                                   lmt_price=lmt_price, aux_price=aux_price, tif=tif, account=account,
                                   good_till_date=good_till_date, unsupported=unsupported)
        existing = self.order_by_client(client_id, order_id)
        if existing is not None and not existing.is_open:
            raise OrderError(103, "Duplicate order id")
        parent = self.order_by_client(client_id, parent_id) if parent_id else None
        if parent_id and existing is None and (parent is None or not parent.is_open):  # a child may change later
            raise OrderError(201, f"Order rejected - reason:the parent order {parent_id} is not working (a "
                                  "bracket's parent must be placed first and still be open)")
        if parent is not None and parent.symbol != symbol:
            raise OrderError(201, "Order rejected - reason:a child order must be for its parent's contract")
        pending = {}
        if parent is not None and parent.status != "Filled":
            pending[symbol] = (1 if parent.action == "BUY" else -1) * parent.remaining
        impact = self.margin_impact(symbol, action, quantity - (existing.filled if existing else 0), order_type,
                                    lmt_price, aux_price, now, pending=pending)
        if not impact.allowed:
            raise OrderError(201, impact.warning)
        if existing is not None:  # modify
            existing.quantity, existing.lmt_price, existing.aux_price = quantity, lmt_price, aux_price
            existing.order_type, existing.tif, existing.good_till = order_type, tif, good_till
            existing.good_till_date = good_till_date
            if transmit and not existing.transmitted:
                self._transmit_chain(existing, now)
            self.save()
            return existing
        o = Order(perm_id=self.next_perm_id, order_id=order_id, client_id=client_id, symbol=symbol,
                  action=action, quantity=float(quantity), order_type=order_type, lmt_price=lmt_price,
                  aux_price=aux_price, tif=tif, account=self.config.account, order_ref=order_ref,
                  outside_rth=outside_rth, placed_at=now, active_from=now, parent_id=parent_id,
                  transmitted=False, oca_group=oca_group, oca_type=oca_type or (1 if oca_group else 0),
                  good_till=good_till, good_till_date=good_till_date, status="PreSubmitted")
        self.next_perm_id += 1
        self.orders[o.perm_id] = o
        if transmit:
            self._transmit_chain(o, now)
        self.save()
        return o

    def _transmit_chain(self, o: Order, now: int) -> None:
        root = self.parent_of(o) or o
        for x in [root, *self.children(root)]:
            if x.is_open and not x.transmitted:
                x.transmitted = True
                if x is not o:
                    self.changed.append(x)
            self._activate(x, now)

    def _activate(self, o: Order, now: int) -> None:
        """Set the status of a transmitted order: Submitted when working, PreSubmitted while held by a parent."""
        if not (o.is_open and o.transmitted):
            return
        if self.is_working(o):
            if o.status != "Submitted":
                o.status = "Submitted"
                o.active_from = max(o.active_from, now)
            if o.session_from is None:
                o.session_from = o.active_from
        else:
            o.status = "PreSubmitted"

    def margin_impact(self, symbol: str, action: str, qty: float, order_type: str, lmt: float | None,
                      aux: float | None, now: int, pending: dict[str, float] | None = None) -> MarginImpact:
        """What an order of `qty` shares does to margin at `now` (USD; rules in margin.py). `pending`: signed
        shares to count as held already (a bracket parent not yet filled). An order that only reduces a
        position is always allowed."""
        symbol = symbol.upper()
        quantities = {s: p.quantity for s, p in self.positions.items() if p.quantity}
        for s, q in (pending or {}).items():
            quantities[s] = quantities.get(s, 0.0) + q
        prices = {s: self.price(s, now) for s in quantities}
        p = self.price(symbol, now)
        prices.setdefault(symbol, p)
        values = self.account_values(now)
        equity = values["EquityWithLoanValue"]
        before = self._requirement(quantities, prices, now)
        sign = 1 if action == "BUY" else -1
        held = quantities.get(symbol, 0.0)
        after_q = held + sign * qty
        ref = max(p, lmt or 0.0, aux or 0.0)
        after_quantities = dict(quantities)
        after_quantities[symbol] = after_q
        after_prices = dict(prices)
        after_prices[symbol] = ref
        after = self._requirement(after_quantities, after_prices, now)
        fee = commission_for(qty, ref, self.config.commission_per_share, self.config.commission_min,
                             self.config.commission_max_fraction)
        equity_after = equity - fee
        reduces = abs(after_q) <= abs(held) and after_q * held >= 0
        rates = M.rates_for(self.config.account_type)
        warning = ""
        if not reduces and after_q < 0 and not rates.shorts_allowed:
            warning = ("Order rejected - reason:YOUR ORDER IS NOT ACCEPTED. SHORT SALES ARE NOT ALLOWED IN A CASH "
                       "ACCOUNT")
        elif not reduces and after.initial > equity_after + 1e-6:
            warning = ("Order rejected - reason:YOUR ORDER IS NOT ACCEPTED. IN ORDER TO OBTAIN THE DESIRED POSITION "
                       f"YOUR EQUITY WITH LOAN VALUE [{equity_after:.2f} USD] MUST EXCEED THE INITIAL MARGIN "
                       f"[{after.initial:.2f} USD]")
        return MarginImpact(init_before=before.initial, maint_before=before.maintenance, equity_before=equity,
                            init_after=after.initial, maint_after=after.maintenance, equity_after=equity_after,
                            commission=fee, allowed=not warning, warning=warning)

    def what_if(self, *, symbol: str, action: str, quantity: float, order_type: str, lmt_price: float | None,
                aux_price: float | None, tif: str, account: str, now: int, good_till_date: str = "",
                unsupported: str = "") -> MarginImpact:
        """The margin impact of an order without placing it (IB's what-if). Raises OrderError for an order IB
        would refuse whatever the margin (bad price, type, account...)."""
        self._validate(symbol=symbol.upper(), action=action, quantity=quantity, order_type=order_type,
                       lmt_price=lmt_price, aux_price=aux_price, tif=tif, account=account,
                       good_till_date=good_till_date, unsupported=unsupported)
        return self.margin_impact(symbol, action, quantity, order_type, lmt_price, aux_price, now)

    def _end(self, o: Order, when: int, status: str, why: str) -> None:
        o.status = status
        o.completed_at = when
        o.completed_status = why
        self.changed.append(o)
        for c in self.children(o):
            if c.is_open and status != "Filled":
                self._end(c, when, "Cancelled", f"Cancelled with its parent order {o.order_id}")

    def cancel(self, client_id: int, order_id: int, now: int) -> Order:
        """Cancel an open order (and its bracket children). Raises OrderError 10147 (not found) or 10148 (done).
        The children cancelled with it are in `pop_changed()`."""
        o = self.order_by_client(client_id, order_id)
        if o is None:
            raise OrderError(10147, f"OrderId {order_id} that needs to be cancelled is not found.")
        if not o.is_open:
            raise OrderError(10148, f"OrderId {order_id} that needs to be cancelled cannot be cancelled, "
                                    f"state: {o.status}.")
        self._end(o, now, "Cancelled", "Cancelled by API")
        self.changed.remove(o)
        self.clock = now
        self.save()
        return o

    def reject(self, o: Order, now: int) -> None:
        self._end(o, now, "Cancelled", "Rejected")
        self.save()

    # --- matching --------------------------------------------------------------------------------------------

    def _next_fill(self, o: Order, now: int) -> tuple[int, float, int] | None:
        """The earliest fill `o` gets by `now`: (time, price, end of that bar), or None (rules in the module
        docstring)."""
        try:
            s = self.market.get(o.symbol).fine
        except UnknownSymbolError:
            return None
        buy = o.action == "BUY"
        if o.tif in ("IOC", "FOK"):
            t = o.active_from
            i = int(np.searchsorted(s.start, t, side="right")) - 1
            if i < 0 or t >= s.end[i] or t > now:
                return None
            op = float(s.open[i])
            lim, stop = float(o.lmt_price or 0), float(o.aux_price or 0)
            ok = (o.order_type == "MKT" or (o.order_type == "LMT" and (op <= lim if buy else op >= lim))
                  or (o.order_type == "STP" and (op >= stop if buy else op <= stop)))
            return (t, op, int(s.end[i])) if ok else None
        expiry = self._expiry(o, s)
        i = int(np.searchsorted(s.start, o.active_from, side="left"))
        if o.tif == "OPG":
            while i < len(s) and i > 0 and s.session[i] == s.session[i - 1]:
                i += 1
        while i < len(s) and s.start[i] <= now and (expiry is None or s.start[i] < expiry):
            op, hi, lo, end = float(s.open[i]), float(s.high[i]), float(s.low[i]), int(s.end[i])
            when = int(s.start[i])
            if o.order_type == "MKT":
                return when, op, end
            if o.order_type == "LMT":
                lim = float(o.lmt_price or 0)
                if (buy and op <= lim) or (not buy and op >= lim):
                    return when, op, end
                if o.tif != "OPG" and end <= now and ((buy and lo <= lim) or (not buy and hi >= lim)):
                    return end, lim, end
            elif o.order_type == "STP":
                stop = float(o.aux_price or 0)
                if (buy and op >= stop) or (not buy and op <= stop):
                    return when, op, end
                if end <= now and ((buy and hi >= stop) or (not buy and lo <= stop)):
                    return end, stop, end
            if end > now:
                return None  # wait for the bar's range
            i += 1
        return None

    def _expiry(self, o: Order, s) -> int | None:
        """When a working order stops working: DAY at its session's close, GTD at goodTillDate, OPG after the
        open it works at; None for GTC."""
        if o.tif == "GTD":
            return o.good_till
        if o.tif not in ("DAY", "OPG"):
            return None
        i = int(np.searchsorted(s.start, o.session_from or o.active_from, side="left"))
        if o.tif == "OPG":
            while i < len(s) and i > 0 and s.session[i] == s.session[i - 1]:
                i += 1
            return int(s.start[i]) + 1 if i < len(s) else None
        if i >= len(s):
            return None
        j = int(np.searchsorted(s.session, s.session[i], side="right")) - 1
        return int(s.end[j])

    def advance(self, now: int) -> list[tuple[Order, Execution]]:
        """Fill what the clock `now` allows, earliest fill first across all working orders (rules in the module
        docstring); expire what is due; run the overnight margin check at a close. Returns the fills in time
        order (orders changed otherwise are in `pop_changed()`)."""
        self.clock = now
        fills: list[tuple[Order, Execution]] = []
        while True:
            best = None
            for o in sorted(self.open_orders(), key=lambda o: o.perm_id):
                if not self.is_working(o):
                    continue
                c = self._next_fill(o, now)
                if c is not None and (best is None or c[0] < best[1][0]):
                    best = (o, c)
            if self._expire_due(now, before=best[1][0] if best else None):
                continue  # something ended before the next fill: look again
            if best is None:
                break
            o, (when, px, bar_end) = best
            qty = o.remaining
            if self.faults.partial_fraction is not None:
                qty = max(1.0, math.floor(o.remaining * self.faults.partial_fraction))
                self.faults.partial_fraction = None
                if o.tif == "FOK":
                    self._end(o, when, "Cancelled", "FOK: the whole quantity could not be filled")
                    continue
            fills.append((o, self._fill(o, qty, px, when)))
            o.active_from = bar_end  # the rest works from the next bar on
            if o.tif == "IOC" and o.is_open:
                self._end(o, when, "Cancelled", "IOC: the rest cancelled")
            self._after_fill(o, qty, bar_end)
        fills.extend(self._overnight_check(now))
        fills.sort(key=lambda f: (f[1].time, f[1].exec_id))
        if fills or self.changed:
            self.save()
        return fills

    def _expire_due(self, now: int, before: int | None) -> bool:
        """End working orders whose time in force ran out by `now` (and before the next fill `before`)."""
        ended = False
        for o in sorted(self.open_orders(), key=lambda o: o.perm_id):
            if not self.is_working(o):
                continue
            if o.tif in ("IOC", "FOK"):
                if o.active_from <= now and (before is None or o.active_from < before) \
                        and self._next_fill(o, now) is None:
                    self._end(o, o.active_from, "Cancelled", f"{o.tif}: not marketable when it arrived")
                    ended = True
                continue
            try:
                s = self.market.get(o.symbol).fine
            except UnknownSymbolError:
                continue
            exp = self._expiry(o, s)
            if exp is not None and now >= exp and (before is None or exp < before):
                why = {"DAY": "Expired at the session's close (DAY)", "GTD": "Expired at its goodTillDate (GTD)",
                       "OPG": "Not filled at the open (OPG)"}[o.tif]
                self._end(o, exp, "Cancelled", why)
                ended = True
        return ended

    def _after_fill(self, o: Order, qty: float, bar_end: int) -> None:
        """A fill's effects on linked orders: a filled parent activates its children; a child reduces its
        siblings (the bracket's OCA); an OCA group cancels (type 1) or reduces (2, 3) the others."""
        if o.status == "Filled":
            for c in self.children(o):
                if c.is_open and c.transmitted:
                    c.active_from = max(c.active_from, bar_end)
                    self._activate(c, bar_end)
                    self.changed.append(c)
        linked: list[tuple[Order, int]] = []
        if o.parent_id:
            parent = self.parent_of(o)
            if parent is not None:
                linked += [(c, 2) for c in self.children(parent) if c is not o and c.is_open]
        if o.oca_group:
            linked += [(x, o.oca_type or 1) for x in self.open_orders() if x is not o and x.oca_group == o.oca_group
                       and x.account == o.account and all(x is not y for y, _ in linked)]
        for x, kind in linked:
            if kind == 1:
                self._end(x, o.completed_at or bar_end, "Cancelled", f"OCA group {o.oca_group}: a sibling filled")
                continue
            x.quantity = max(x.quantity - qty, x.filled)
            if x.remaining <= 0:
                self._end(x, o.completed_at or bar_end, "Cancelled",
                          "Reduced to 0 by a filled sibling (OCA)" if o.oca_group else
                          "Cancelled: the other child of the bracket filled")
            else:
                self.changed.append(x)

    def _overnight_check(self, now: int) -> list[tuple[Order, Execution]]:
        """At each session's close: positions breaking the overnight requirement are liquidated (margin.py)."""
        s = self._session(now)
        if s is None or now < s.close.timestamp():
            return []
        day = int(s.date.strftime("%Y%m%d"))
        if self.eod_checked >= day:
            return []
        self.eod_checked = day
        close = int(s.close.timestamp())
        out = []
        while True:
            values = self.account_values(close)
            deficit = values["RegTMargin"] - values["EquityWithLoanValue"]
            held = sorted(((abs(p.quantity * self.price(sym, close)), sym) for sym, p in self.positions.items()
                           if p.quantity), reverse=True)
            if deficit <= 1e-6 or not held or M.rates_for(self.config.account_type).overnight <= 0:
                break
            _, sym = held[0]
            pos = self.positions[sym]
            px = self.price(sym, close)
            rate = M.rates_for(self.config.account_type).overnight
            shares = min(abs(pos.quantity), math.ceil(deficit / (px * rate)) if px > 0 else abs(pos.quantity))
            o = Order(perm_id=self.next_perm_id, order_id=0, client_id=0, symbol=sym,
                      action="SELL" if pos.quantity > 0 else "BUY", quantity=float(shares), order_type="MKT",
                      lmt_price=None, aux_price=None, tif="DAY", account=self.config.account,
                      order_ref=LIQUIDATION_REF, outside_rth=False, placed_at=close, active_from=close)
            self.next_perm_id += 1
            self.orders[o.perm_id] = o
            e = self._fill(o, float(shares), px, close)
            e.liquidation = True
            out.append((o, e))
        return out

    def pop_changed(self) -> list[Order]:
        """Orders whose state changed without a fill of their own since the last call (the server tells their
        clients): expired, cancelled with a parent or an OCA sibling, reduced, or activated."""
        out, seen = [], set()
        for o in self.changed:
            if o.perm_id not in seen:
                seen.add(o.perm_id)
                out.append(o)
        self.changed = []
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

    def executions_on(self, now: int, since: int | None = None) -> list[Execution]:
        """Executions on the America/New_York calendar day of `now` (what reqExecutions returns), at or after
        `since` (epoch seconds; ExecutionFilter.time) when given."""
        day = ny_date_of(now)
        return [e for e in self.executions if ny_date_of(e.time) == day and e.time <= now
                and (since is None or e.time >= since)]

    def pnl(self, now: int, symbol: str | None = None) -> dict[str, float]:
        """reqPnL / reqPnLSingle values (USD): dailyPnL (the session's: realized today + the change of the
        positions' value since the previous close or their opening today), unrealizedPnL, realizedPnL (today's
        executions), and for one symbol its position (shares) and value."""
        day = ny_date_of(now)
        today = [e for e in self.executions if ny_date_of(e.time) == day and e.time <= now
                 and (symbol is None or e.symbol == symbol)]
        realized = sum(e.realized_pnl for e in today)
        unrealized = daily = value = qty = 0.0
        for sym, pos in self.positions.items():
            if symbol is not None and sym != symbol:
                continue
            p = self.price(sym, now)
            unrealized += pos.quantity * (p - pos.avg_cost) if pos.quantity else 0.0
            value += pos.quantity * p
            qty += pos.quantity
            prev = self.market.previous_close(sym, now)
            bought_today = sum((1 if e.side == "BOT" else -1) * e.shares for e in today if e.symbol == sym)
            carried = pos.quantity - bought_today
            if prev is not None:
                daily += carried * (p - prev)
            daily += sum((1 if e.side == "BOT" else -1) * e.shares * (p - e.price) - e.commission
                         for e in today if e.symbol == sym)
        return {"daily": daily, "unrealized": unrealized, "realized": realized, "position": qty, "value": value}


def exec_time_str(epoch: int) -> str:
    """'YYYYMMDD HH:MM:SS America/New_York' as TWS writes execution times."""
    return datetime.fromtimestamp(epoch, NY).strftime("%Y%m%d %H:%M:%S") + " America/New_York"
