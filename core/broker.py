"""The Broker interface the flows use, its value types and its typed errors.

One implementation exists: `core.ib_broker.IBBroker` (Interactive Brokers over ib_insync). The paper exchange
(`core.paper_exchange`) is not another implementation: it is a server the same IBBroker connects to.

Units: money in USD, quantities in shares, prices in USD a share. Times are timezone-aware; market times are
America/New_York.

Historical bars (`Broker.historical_bars`) come as a DataFrame of this shape (`BARS_COLUMNS`):
- index `timestamp`: a tz-aware DatetimeIndex in America/New_York, ascending and unique. Intraday bars are
  stamped with their START (09:30, 09:35 ...); daily bars with midnight of the session date.
- columns `open, high, low, close` (float64, USD a share) and `volume` (float64, shares).
An empty result has the same columns and an empty tz-aware index.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo

import pandas as pd

from core.order_status import OrderStatus

NY = ZoneInfo("America/New_York")
BARS_COLUMNS = ("open", "high", "low", "close", "volume")
BarSize = Literal["5 mins", "1 hour", "1 day"]
BAR_SIZES: tuple[str, ...] = ("5 mins", "1 hour", "1 day")
OrderType = Literal["MKT", "LMT", "STP"]
Action = Literal["BUY", "SELL"]


# --------------------------------------------------------------------------------------------------------------
# errors


class BrokerError(Exception):
    """Base of every broker failure. `code` is IB's error code when IB gave one (else None)."""

    def __init__(self, message: str, code: int | None = None):
        super().__init__(f"IB error {code}: {message}" if code is not None else message)
        self.code = code
        self.message = message


class BrokerConnectionError(BrokerError):
    """No connection could be made or kept (refused, dropped, handshake failed); the message says what to check."""


class ClientIdInUseError(BrokerConnectionError):
    """IB error 326: the client id is used by another connection."""


class BrokerTimeoutError(BrokerError):
    """A request got no (complete) answer in time."""


class IBError(BrokerError):
    """An error IB reported; `code` and `message` are IB's."""


class UnknownContractError(IBError):
    """IB error 200: no security definition for the request."""


class OrderRejectedError(IBError):
    """IB rejected the order (e.g. 201: beyond buying power)."""


class PacingViolationError(IBError):
    """IB error 162/420 pacing violation, or the broker's own pacing would wait longer than allowed."""


class MarketDataError(IBError):
    """Market data unavailable (e.g. 354 not subscribed, 10167 delayed only, 10168 no delayed permission)."""


class LiveTradingRefusedError(BrokerError):
    """An order for an account that is not a paper account, without TRADING_MODE=live and
    TRADEFLOW_LIVE_ACCOUNT naming that account."""


class OrderNotFilledError(BrokerError):
    """The order ended (cancelled, rejected, inactive) without being completely filled."""


# --------------------------------------------------------------------------------------------------------------
# values


@dataclass(frozen=True)
class AccountValues:
    """Account values in USD: net liquidation, available funds, buying power, cash (total cash value)."""

    account: str
    net_liquidation: float
    available_funds: float
    buying_power: float
    cash: float
    currency: str = "USD"


@dataclass(frozen=True)
class MarginImpact:
    """What an order would do to the account's margin, from IB's what-if answer (USD): initial and maintenance
    margin and equity with loan, before, change and after; the order's commission (None when IB gives none);
    IB's warning text ('' when none). The order is not placed."""

    init_margin_before: float
    init_margin_change: float
    init_margin_after: float
    maint_margin_before: float
    maint_margin_change: float
    maint_margin_after: float
    equity_with_loan_before: float
    equity_with_loan_change: float
    equity_with_loan_after: float
    commission: float | None = None
    warning: str = ""

    @property
    def fits(self) -> bool:
        """Whether equity with loan after the order covers the initial margin after it."""
        return self.init_margin_after <= self.equity_with_loan_after

    def as_record(self) -> dict:
        """The numbers as a flat dict (for a decision's journaled inputs)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Position:
    """A position: `quantity` shares (negative when short), `avg_cost` USD a share (IB includes commissions)."""

    account: str
    symbol: str
    quantity: float
    avg_cost: float


@dataclass(frozen=True)
class OrderRequest:
    """An order to place.

    `order_ref` identifies the order's intent and makes placing idempotent: placing a request whose order_ref
    is already among open orders or today's executions returns that order and sends nothing.
    `limit_price` is required for LMT, `stop_price` for STP (USD). `quantity` is whole shares > 0.
    `oca_group`: IB's One-Cancels-All group name ('' for none) and `oca_type` its kind (IB: 1 cancels the other
    orders of the group when one fills, 2 reduces their quantity by the shares filled, with block; 3 reduces without
    block): a stop-loss and a take-profit of one position share a group.
    """

    symbol: str
    action: Action
    quantity: int
    order_ref: str
    order_type: OrderType = "MKT"
    limit_price: float | None = None
    stop_price: float | None = None
    tif: Literal["DAY", "GTC", "IOC", "FOK", "OPG"] = "DAY"
    oca_group: str = ""
    oca_type: int = 0

    def __post_init__(self) -> None:
        if not self.order_ref:
            raise ValueError("every order needs an order_ref (it makes placing idempotent)")
        if self.action not in ("BUY", "SELL"):
            raise ValueError(f"action must be BUY or SELL, not {self.action!r}")
        if self.order_type not in ("MKT", "LMT", "STP"):
            raise ValueError(f"order_type must be MKT, LMT or STP, not {self.order_type!r}")
        if int(self.quantity) != self.quantity or self.quantity <= 0:
            raise ValueError("quantity must be a positive whole number of shares")
        if self.order_type == "LMT" and not self.limit_price:
            raise ValueError("a LMT order needs limit_price")
        if self.order_type == "STP" and not self.stop_price:
            raise ValueError("a STP order needs stop_price")
        if self.oca_type not in (0, 1, 2, 3) or (self.oca_type and not self.oca_group):
            raise ValueError(f"oca_type must be 0-3 and needs an oca_group, got {self.oca_type!r} "
                             f"group {self.oca_group!r}")


@dataclass(frozen=True)
class BracketRequest:
    """A bracket (IB's attached orders, "Bracket Orders" in the TWS API docs): the `entry` (the parent) and its two
    children on the other side, the `stop_loss` (STP) and the `take_profit` (LMT), each for the entry's quantity
    and in one OCA group (`oca_group`, the children's; IB's bracket makes them one already: a fill of one reduces
    the other). The children are held by IB until the entry fills, then work; cancelling the entry cancels them.

    Every leg has its own `order_ref`, so that placing is idempotent leg by leg (`Broker.place_bracket`).

    Raises:
        ValueError: the legs are not one bracket (another symbol, the children on the entry's side or of another
            quantity, the stop-loss not STP or the take-profit not LMT, the children not in one OCA group, an
            orderRef used twice).
    """

    entry: OrderRequest
    stop_loss: OrderRequest
    take_profit: OrderRequest

    def __post_init__(self) -> None:
        e, sl, tp = self.legs
        if not (e.symbol == sl.symbol == tp.symbol):
            raise ValueError(f"a bracket's legs must be for one symbol, got {e.symbol}, {sl.symbol}, {tp.symbol}")
        if sl.action == e.action or tp.action == e.action:
            raise ValueError(f"a bracket's stop-loss and take-profit must be on the other side of its {e.action} "
                             f"entry, got {sl.action} and {tp.action}")
        if not (e.quantity == sl.quantity == tp.quantity):
            raise ValueError(f"a bracket's children must be for the entry's {e.quantity} shares, got "
                             f"{sl.quantity} and {tp.quantity}")
        if sl.order_type != "STP" or tp.order_type != "LMT":
            raise ValueError(f"a bracket's stop-loss must be STP and its take-profit LMT, got {sl.order_type} and "
                             f"{tp.order_type}")
        if not sl.oca_group or sl.oca_group != tp.oca_group or e.oca_group:
            raise ValueError(f"a bracket's children must share one OCA group (and the entry none), got "
                             f"{sl.oca_group!r} and {tp.oca_group!r} (entry {e.oca_group!r})")
        if len({e.order_ref, sl.order_ref, tp.order_ref}) != 3:
            raise ValueError("each leg of a bracket needs its own order_ref")

    @property
    def legs(self) -> tuple[OrderRequest, OrderRequest, OrderRequest]:
        """(entry, stop_loss, take_profit)."""
        return self.entry, self.stop_loss, self.take_profit


@dataclass(frozen=True)
class OrderInfo:
    """An order as the broker knows it. Prices and commission USD, quantities shares.

    `status` is IB's (PendingSubmit, PreSubmitted, Submitted, Filled, Cancelled, Inactive, ...). `commission`
    sums the commission reports received for its fills. `existing` is true when `place_order` found the
    order_ref already placed and sent nothing.
    """

    order_id: int
    perm_id: int
    order_ref: str
    symbol: str
    action: str
    quantity: float
    order_type: str
    limit_price: float | None
    stop_price: float | None
    status: str
    filled: float
    remaining: float
    avg_fill_price: float
    commission: float
    existing: bool = False

    @property
    def is_filled(self) -> bool:
        return self.status == OrderStatus.FILLED

    @property
    def is_done(self) -> bool:
        return self.status in OrderStatus.DONE


@dataclass(frozen=True)
class BracketInfo:
    """A bracket as the broker knows it, leg by leg (`BracketRequest`). `parent_id` is the entry's orderId, which
    IB's children carry as their parentId."""

    entry: OrderInfo
    stop_loss: OrderInfo
    take_profit: OrderInfo
    parent_id: int

    @property
    def legs(self) -> tuple[OrderInfo, OrderInfo, OrderInfo]:
        """(entry, stop_loss, take_profit)."""
        return self.entry, self.stop_loss, self.take_profit


@dataclass(frozen=True)
class Execution:
    """One fill. `side` BUY/SELL, `shares`, `price` USD, `time` aware (America/New_York), commission USD
    (0.0 until IB's commission report arrives), `realized_pnl` USD."""

    exec_id: str
    order_id: int
    perm_id: int
    order_ref: str
    symbol: str
    side: str
    shares: float
    price: float
    time: datetime
    commission: float
    realized_pnl: float
    account: str


@dataclass(frozen=True)
class Quote:
    """A current price: `price` USD (last trade, else midpoint, else previous close), with bid/ask/last/close as
    IB gave them (None when absent); `delayed` is true when IB served delayed data."""

    symbol: str
    price: float
    bid: float | None = None
    ask: float | None = None
    last: float | None = None
    close: float | None = None
    delayed: bool = False
    extra: dict = field(default_factory=dict)


def empty_bars() -> pd.DataFrame:
    """A bars DataFrame with no rows (the documented shape)."""
    idx = pd.DatetimeIndex([], tz=NY, name="timestamp")
    return pd.DataFrame({c: pd.Series([], dtype="float64", index=idx) for c in BARS_COLUMNS}, index=idx)


# --------------------------------------------------------------------------------------------------------------
# the interface


class Broker(abc.ABC):
    """What flows use to trade. A context manager: `with broker: ...` connects and disconnects.

    Every method may raise BrokerConnectionError (no connection), BrokerTimeoutError (no answer in time) or an
    IBError subclass carrying IB's code and message.
    """

    def __enter__(self) -> "Broker":
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    @abc.abstractmethod
    def connect(self) -> None:
        """Connect (with retries and backoff). Raises BrokerConnectionError saying what to check."""

    @abc.abstractmethod
    def disconnect(self) -> None:
        """Disconnect; safe to call when not connected."""

    @property
    @abc.abstractmethod
    def account(self) -> str:
        """The account traded (e.g. DU1234567 for paper)."""

    @abc.abstractmethod
    def current_time(self) -> datetime:
        """The broker's clock (TWS's `reqCurrentTime`; the paper exchange's replay clock), aware, America/New_York.

        Flows compare it with their `as_of` to refuse acting late: it is the time the market is at, which in a
        replay is not the host's clock."""

    @abc.abstractmethod
    def account_values(self) -> AccountValues:
        """NetLiquidation, AvailableFunds, BuyingPower and cash, USD."""

    @abc.abstractmethod
    def positions(self) -> list[Position]:
        """Non-zero positions of the account."""

    @abc.abstractmethod
    def open_orders(self) -> list[OrderInfo]:
        """Orders still working (of every client of the account)."""

    @abc.abstractmethod
    def completed_orders(self) -> list[OrderInfo]:
        """Orders that ended (Filled, Cancelled, Inactive), of every client of the account, as IB lists them
        (TWS keeps them since its last restart; the paper exchange keeps every one): how reconciliation learns
        the final state of an order whose process died."""

    @abc.abstractmethod
    def guard_live(self, what: str = "an order") -> None:
        """Raise LiveTradingRefusedError naming `what` unless the account may be changed: a paper account, or a
        live one with both opt-ins (TRADING_MODE=live and TRADEFLOW_LIVE_ACCOUNT naming it). Every method that
        changes the account (place, place a bracket, modify, cancel, global cancel) calls it before sending
        anything; a caller whose steps must all happen or none (flatten: cancel, then sell) calls it before the
        first."""

    @abc.abstractmethod
    def place_order(self, request: OrderRequest) -> OrderInfo:
        """Place an order idempotently (see OrderRequest.order_ref) and wait until IB acknowledges it. When the
        connection breaks before the acknowledgement, reconnect and return the order if the broker lists it by
        its orderRef (never sending it twice).

        Raises LiveTradingRefusedError (non-paper account without the live opt-in), OrderRejectedError,
        UnknownContractError, BrokerTimeoutError, BrokerConnectionError (no connection, or the order is not
        listed after a reconnect).
        """

    @abc.abstractmethod
    def place_bracket(self, request: BracketRequest) -> BracketInfo:
        """Place a bracket as IB's pattern says (TWS API "Bracket Orders"): the entry with transmit=False, the
        stop-loss with parentId = the entry's orderId and transmit=False, the take-profit likewise with
        transmit=True, which transmits the three at once (so no leg can fill before all are at IB); then wait
        until IB acknowledges each. Idempotent leg by leg (`OrderRequest.order_ref`): a leg the broker lists is
        not sent again, a missing child is attached to the entry found while the entry still works.

        Raises LiveTradingRefusedError (before anything is sent), OrderRejectedError (IB refused a leg; IB
        cancels the children of a refused entry), UnknownContractError, BrokerTimeoutError, BrokerConnectionError
        (as `place_order`: placing the same request again is safe), BrokerError (children missing while the entry
        has ended: they can no longer be attached).
        """

    @abc.abstractmethod
    def modify_quantity(self, order_id: int, quantity: int) -> OrderInfo:
        """Change the total quantity (shares, filled ones included, as IB's totalQuantity) of an open order,
        everything else kept (a bracket child stays attached and in its OCA group), and wait until IB has taken
        it. Returns the order as IB then lists it; an order already of that quantity, or already ended, is
        returned as it is and nothing is sent.

        Raises LiveTradingRefusedError (as place_order), OrderRejectedError (IB refused the change, or 10147 the
        order is not found), BrokerTimeoutError, BrokerConnectionError (the order's client id, the only one that may
        change it, could not connect)."""

    @abc.abstractmethod
    def what_if(self, request: OrderRequest) -> MarginImpact:
        """Ask IB what `request` would do to margin (a what-if order: nothing is placed). Raises IBError when IB
        refuses the order itself (bad price 110, unknown contract 200...), BrokerTimeoutError, BrokerError when
        the answer carries no margin numbers."""

    @abc.abstractmethod
    def cancel_order(self, order_id: int, timeout: float | None = None) -> OrderInfo:
        """Cancel an open order and wait until IB confirms; returns its final state (which may be Filled when
        the fill won the race). Raises LiveTradingRefusedError (as place_order), IBError (e.g. 10147 not found),
        BrokerTimeoutError."""

    @abc.abstractmethod
    def cancel_all_orders(self, timeout: float | None = None) -> list[OrderInfo]:
        """Cancel every open order of the account, whichever client placed it (IB's global cancel), and wait
        until none is open; returns the orders that were open. Raises LiveTradingRefusedError (as place_order,
        before anything is cancelled), BrokerTimeoutError."""

    @abc.abstractmethod
    def wait_for_fill(self, order_id: int, timeout: float) -> OrderInfo:
        """Wait up to `timeout` seconds until the order is completely filled (commissions received).

        Raises BrokerTimeoutError (still working), OrderNotFilledError (it ended unfilled or partly filled)."""

    @abc.abstractmethod
    def executions(self) -> list[Execution]:
        """Today's executions of the account (IB returns those since midnight), with commissions."""

    @abc.abstractmethod
    def historical_bars(self, symbol: str, bar_size: BarSize, duration: str, end: datetime | None = None,
                        regular_hours: bool = True) -> pd.DataFrame:
        """Bars of `bar_size` ('5 mins', '1 hour', '1 day') covering `duration` (IB's syntax: '2 D', '1 W',
        '3 M', '1 Y', '3600 S') and ending at the aware datetime `end` (None: now at the broker).
        Returns the DataFrame shape of this module's docstring. Raises UnknownContractError, IBError."""

    def historical_requests_available(self) -> int | None:
        """How many historical-data requests may be made now without waiting for the pacing window (None: the
        implementation does not pace). Callers with a request budget (the retrain's bar store) take the smaller."""
        return None

    @abc.abstractmethod
    def current_price(self, symbol: str) -> Quote:
        """The current price, from live data, or delayed data when live data is not subscribed."""

    @abc.abstractmethod
    def vix(self) -> float:
        """The VIX index value (CBOE), index points."""
