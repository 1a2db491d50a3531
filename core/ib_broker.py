"""The Broker over Interactive Brokers' TWS API: the ONLY module that imports ib_insync.

The client library is chosen here, once: ib_insync 0.9.86 (the locked default) or its maintained continuation
ib_async (same API) when the environment sets `TRADEFLOW_IB_LIBRARY=ib_async`. Never install both in one
environment (they overwrite each other's `eventkit`).

What this implementation adds to the library:
- contracts qualified once and cached (SMH, AAPL, TSLA … as SMART/USD stocks; VIX as a CBOE index);
- a distinct client id for every concurrent connection in the process, and the next id when IB answers 326;
- connect retries with exponential backoff, and a reconnect before any request when the connection dropped;
- a timeout on every request; every IB error raised as a typed `core.broker` exception with IB's code;
- historical requests paced within IB's limit (default 60 in any 600 s);
- idempotent placing by orderRef, brackets leg by leg (IB's parentId/transmit pattern);
- paper by default, with a loud refusal of every request that changes a non-paper account (place, modify,
  cancel, global cancel: `guard_live`) unless TRADING_MODE=live and TRADEFLOW_LIVE_ACCOUNT names it.

The blocking API is used; do not call it from inside a running asyncio event loop.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import os
import threading
import time
from datetime import datetime, timezone

import pandas as pd

from core.broker import (
    BAR_SIZES,
    NY,
    AccountValues,
    Broker,
    BrokerConnectionError,
    BrokerError,
    BrokerTimeoutError,
    BracketInfo,
    BracketRequest,
    ClientIdInUseError,
    Execution,
    IBError,
    LiveTradingRefusedError,
    MarginImpact,
    MarketDataError,
    OrderInfo,
    OrderNotFilledError,
    OrderRejectedError,
    OrderRequest,
    PacingViolationError,
    Position,
    Quote,
    UnknownContractError,
    empty_bars,
)
from core.order_status import OrderStatus
from core.settings import Settings, get_settings


def _ensure_event_loop() -> None:
    """ib_insync runs every request on the thread's event loop: give the thread one when it has none (an
    `asyncio.run()` earlier in the same thread, e.g. a Prefect client call, leaves none set)."""
    try:
        asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())


# eventkit (imported by the library) asks for the importing thread's event loop at import time, and a thread other
# than the main one has none: Prefect imports a deployment's flow module in a worker thread, so without this every
# served or worker run of a flow crashed before starting ("There is no current event loop in thread 'AnyIO worker
# thread'").
_ensure_event_loop()
IB_LIBRARY = os.environ.get("TRADEFLOW_IB_LIBRARY", "ib_insync")
if IB_LIBRARY == "ib_async":  # the one switch between the two libraries
    import ib_async as ibapi  # type: ignore[import-not-found]
else:
    import ib_insync as ibapi

log = logging.getLogger("tradeflow.broker")

INDICES = {"VIX": "CBOE"}
"""Symbols that are indices, with their exchange; everything else is a SMART/USD stock."""
PAPER_ACCOUNT_PREFIX = "DU"
_DONE = OrderStatus.DONE
_ACKED = OrderStatus.ACKNOWLEDGED

_ids_lock = threading.Lock()
_ids_in_use: set[tuple[str, int, int]] = set()


def typed_error(code: int, message: str) -> IBError:
    """The core.broker exception for an IB error code."""
    if code == 200:
        return UnknownContractError(message, code)
    if code in (201, 202, 203, 103, 104, 105, 110, 135, 161, 10147, 10148):
        return OrderRejectedError(message, code)
    if code in (162, 420) and "pacing" in message.lower():
        return PacingViolationError(message, code)
    if code in (354, 10089, 10090, 10167, 10168, 10197):
        return MarketDataError(message, code)
    return IBError(message, code)


def connection_hint(host: str, port: int, client_id: int, restart_time: str | None = None) -> str:
    """What to check when no connection can be made; names IB Gateway's daily restart (HH:MM New York) when
    given."""
    restart = (f"IB Gateway restarts daily at {restart_time} New York (TRADEFLOW_GATEWAY_RESTART_TIME; IBC) and "
               "needs a new login weekly: a run during the restart finds it down, and the next run recovers. "
               if restart_time else "")
    return (f"could not connect to TWS API at {host}:{port} (client id {client_id}). {restart}Check that TWS or IB "
            "Gateway (or `tradeflow paper-exchange`) is running; that the API is enabled (TWS: Configure > API > "
            "Settings > Enable ActiveX and Socket Clients); that the port is right (IBKR_PORT: TWS 7497 paper / "
            "7496 live, IB Gateway 4002 paper / 4001 live) and 127.0.0.1 is a trusted IP; and that the client "
            "id is not used by another connection (IBKR_CLIENT_ID).")


class _Pacer:
    """At most `limit` requests in any `window` seconds (IB: about 60 historical requests per 10 minutes)."""

    def __init__(self, limit: int, window: float):
        self.limit, self.window = limit, window
        self.times: collections.deque[float] = collections.deque()
        self.lock = threading.Lock()

    def wait_time(self, now: float) -> float:
        while self.times and now - self.times[0] >= self.window:
            self.times.popleft()
        if len(self.times) < self.limit:
            return 0.0
        return self.times[0] + self.window - now

    def record(self, now: float) -> None:
        self.times.append(now)


_historical_pacers: dict[tuple[str, int], _Pacer] = {}
_historical_pacers_lock = threading.Lock()


def _historical_pacer(host: str, port: int) -> _Pacer:
    """The process's one pacer for the gateway at host:port.

    IB counts historical requests per gateway session (all its client ids), so every IBBroker in this process
    that talks to the same gateway shares one window; a different gateway (another port) has its own.
    """
    with _historical_pacers_lock:
        return _historical_pacers.setdefault((host, port), _Pacer(60, 600.0))


class IBBroker(Broker):
    """Broker over TWS / IB Gateway / the paper exchange.

    Args:
        host, port, client_id: default from settings (IBKR_HOST, IBKR_PORT, IBKR_CLIENT_ID). `client_id` is the
            base id: concurrent IBBroker connections in a process take base, base+1, …; an id IB refuses
            (326) is skipped.
        settings: the Settings (default `get_settings()`); TRADING_MODE and TRADEFLOW_LIVE_ACCOUNT guard live
            accounts.
        timeout: seconds any request may take (BrokerTimeoutError after).
        connect_timeout: seconds one connection attempt may take.
        connect_attempts: attempts per connect (refused/timed-out connections), with backoff
            `backoff`, 2*backoff, 4*backoff … seconds between them (at most 30 s).
        max_client_ids: how many ids after the base to try when IB answers 326.
        historical_pacing: (requests, seconds) allowed for historical data; a request that would have to wait
            longer than `timeout` raises PacingViolationError instead.
    """

    def __init__(self, host: str | None = None, port: int | None = None, client_id: int | None = None, *,
                 settings: Settings | None = None, timeout: float = 15.0, connect_timeout: float = 5.0,
                 connect_attempts: int = 3, backoff: float = 0.5, max_client_ids: int = 32,
                 historical_pacing: tuple[int, float] | None = None, account: str | None = None):
        self.settings = settings or get_settings()
        self.host = host or self.settings.ibkr_host
        self.port = int(port or self.settings.ibkr_port)
        self.base_client_id = self.settings.ibkr_client_id if client_id is None else int(client_id)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.connect_attempts = max(1, connect_attempts)
        self.backoff = backoff
        self.max_client_ids = max_client_ids
        self.pacer = (_Pacer(*historical_pacing) if historical_pacing
                      else _historical_pacer(self.host, self.port))
        self.client_id: int | None = None
        self._account = account
        self._contracts: dict[str, object] = {}
        self._perm_ids: dict[int, int] = {}  # orderId -> permId of orders placed here (they outlive reconnects)
        self._errors: list[tuple[int, int, str]] = []
        self._ib_lost = ""  # IB's 1100 text while the gateway has lost IB's servers
        self.ib = ibapi.IB()
        self.ib.RaiseRequestErrors = True
        self.ib.RequestTimeout = timeout
        self.ib.errorEvent += self._on_error

    # --- connection --------------------------------------------------------------------------------------------

    def _on_error(self, req_id: int, code: int, message: str, *args: object) -> None:
        self._errors.append((req_id, code, message))
        del self._errors[:-200]
        if code in (1100, 1101, 1102):  # IB Gateway lost / regained IB's servers (its nightly reset)
            self._ib_lost = message if code == 1100 else ""
            (log.error if code == 1100 else log.warning)("IB %d: %s", code, message)
        elif code in (2103, 2105, 2157):
            log.warning("IB %d: %s", code, message)

    @property
    def account(self) -> str:
        if not self._account:
            raise BrokerConnectionError("not connected: the account is not known yet")
        return self._account

    @property
    def is_paper(self) -> bool:
        """Whether the account is an IB paper account (ids start with DU)."""
        return self.account.startswith(PAPER_ACCOUNT_PREFIX)

    def is_connected(self) -> bool:
        return self.ib.isConnected()

    def _claim_id(self, start: int) -> int:
        with _ids_lock:
            for cid in range(start, start + self.max_client_ids):
                key = (self.host, self.port, cid)
                if key not in _ids_in_use:
                    _ids_in_use.add(key)
                    return cid
        raise BrokerConnectionError(f"no free client id in {start}..{start + self.max_client_ids - 1}")

    def _release_id(self) -> None:
        if self.client_id is not None:
            with _ids_lock:
                _ids_in_use.discard((self.host, self.port, self.client_id))
            self.client_id = None

    async def _connect_once(self, cid: int) -> str | None:
        """One attempt; returns None when connected, 'in use' on 326, else raises."""
        loop = asyncio.get_running_loop()
        refused: asyncio.Future = loop.create_future()

        def on_error(req_id: int, code: int, message: str, *a: object) -> None:
            if code == 326 and not refused.done():
                refused.set_result("in use")

        def on_api_error(msg: str) -> None:
            if not refused.done():
                refused.set_result("in use" if "already in use" in str(msg) else str(msg))

        self.ib.errorEvent += on_error
        self.ib.client.apiError += on_api_error
        task = asyncio.ensure_future(self.ib.connectAsync(self.host, self.port, cid, timeout=self.connect_timeout,
                                                          account=self._account or ""))
        try:
            done, _ = await asyncio.wait({task, refused}, timeout=self.connect_timeout * 3,
                                         return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                task.result()
                return None
            if refused.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                self.ib.disconnect()
                return refused.result()
            task.cancel()
            raise TimeoutError("connect timed out")
        finally:
            self.ib.errorEvent -= on_error
            self.ib.client.apiError -= on_api_error

    def connect(self) -> None:
        """Connect with retries and backoff; takes the next client id on 326.

        Raises ClientIdInUseError (every id tried was in use), BrokerConnectionError (with what to check)."""
        if self.ib.isConnected():
            return
        _ensure_event_loop()
        self._ib_lost = ""  # a new connection's greeting says again (1100) when IB is unreachable
        start = self.base_client_id
        last_exc: BaseException | None = None
        attempt = 0
        tried_ids = 0
        while attempt < self.connect_attempts:
            cid = self._claim_id(start)
            self.client_id = cid
            try:
                outcome = ibapi.util.run(self._connect_once(cid))
            except (ConnectionRefusedError, OSError, TimeoutError, asyncio.TimeoutError, ConnectionError) as exc:
                last_exc = exc
                self._release_id()
                self.ib.disconnect()
                attempt += 1
                if attempt < self.connect_attempts:
                    delay = min(30.0, self.backoff * 2 ** (attempt - 1))
                    log.warning("connect to %s:%d failed (%r); retrying in %.2f s", self.host, self.port, exc, delay)
                    time.sleep(delay)
                continue
            if outcome is None:
                break
            self._release_id()
            if outcome == "in use":
                tried_ids += 1
                log.warning("client id %d is in use (IB 326); trying %d", cid, cid + 1)
                if tried_ids >= self.max_client_ids:
                    raise ClientIdInUseError(f"client ids {self.base_client_id}..{cid} are all in use", 326)
                start = cid + 1
                continue
            last_exc = ConnectionError(outcome)
            attempt += 1
            if attempt < self.connect_attempts:
                time.sleep(min(30.0, self.backoff * 2 ** (attempt - 1)))
        else:
            raise BrokerConnectionError(
                f"{connection_hint(self.host, self.port, start, self.settings.gateway_restart_time)} "
                f"Last error: {last_exc!r}") from last_exc
        accounts = self.ib.managedAccounts()
        if self._account and accounts and self._account not in accounts:
            self.disconnect()
            raise BrokerConnectionError(f"account {self._account} is not among the connection's accounts "
                                        f"{', '.join(accounts)}")
        if not self._account:
            if not accounts:
                self.disconnect()
                raise BrokerConnectionError("IB reported no managed account")
            self._account = accounts[0]
        log.info("connected to %s:%d as client %s, account %s (%s)", self.host, self.port, self.client_id,
                 self._account, "paper" if self.is_paper else "NOT PAPER")

    def disconnect(self) -> None:
        """Disconnect and free the client id; safe when not connected."""
        try:
            if self.ib.isConnected():
                self.ib.disconnect()
        finally:
            self._release_id()

    def _ensure(self) -> None:
        if not self.ib.isConnected():
            if self.client_id is not None or self._account:
                log.warning("connection to %s:%d lost; reconnecting", self.host, self.port)
            self._release_id()
            self.connect()

    def _call(self, what: str, fn, *args, **kwargs):
        """Run one blocking library request with the timeout and typed errors. Every request made through here
        only reads (orders are placed and cancelled elsewhere), so when the connection breaks during it, it is
        asked again once on a new connection (`connect`'s own retries apply); a second break, or a failed
        reconnect, raises BrokerConnectionError naming host and port."""
        for attempt in (1, 2):
            self._ensure()
            try:
                return fn(*args, **kwargs)
            except ibapi.RequestError as exc:
                raise typed_error(exc.code, exc.message) from exc
            except (asyncio.TimeoutError, TimeoutError) as exc:
                raise BrokerTimeoutError(f"{what}: no answer within {self.timeout:g} s") from exc
            except ConnectionError as exc:
                if attempt == 2:
                    raise BrokerConnectionError(f"{what}: the connection to {self.host}:{self.port} broke again "
                                                f"after a reconnect ({exc})") from exc
                log.warning("%s: the connection to %s:%d broke during the request (%s); reconnecting to ask "
                            "again", what, self.host, self.port, exc)

    def _barrier(self) -> None:
        """A round trip: every update IB sent before it has been processed when it returns."""
        self._call("current time", self.ib.reqCurrentTime)

    def _wait(self, cond, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerTimeoutError(f"{what}: not done within {timeout:g} s")
            if not self.ib.isConnected():
                raise BrokerConnectionError(f"{what}: connection lost")
            try:
                self.ib.waitOnUpdate(timeout=min(remaining, 0.25))
            except ConnectionError as exc:  # the socket closed while waiting (the library raises the builtin)
                raise BrokerConnectionError(f"{what}: connection lost ({exc})") from exc

    # --- contracts ---------------------------------------------------------------------------------------------

    def contract(self, symbol: str):
        """The qualified contract of `symbol` (cached). Raises UnknownContractError."""
        symbol = symbol.upper()
        c = self._contracts.get(symbol)
        if c is None:
            if symbol in INDICES:
                c = ibapi.Index(symbol, INDICES[symbol], "USD")
            else:
                c = ibapi.Stock(symbol, "SMART", "USD")
            got = [x for x in (self._call(f"qualify {symbol}", self.ib.qualifyContracts, c) or []) if x]
            if not got or not getattr(c, "conId", 0):
                raise UnknownContractError(f"no security definition for {symbol}", 200)
            self._contracts[symbol] = c
        return c

    # --- account -------------------------------------------------------------------------------------------------

    def current_time(self) -> datetime:
        t = self._call("current time", self.ib.reqCurrentTime)
        return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).astimezone(NY)

    def account_values(self) -> AccountValues:
        self._barrier()
        values = {v.tag: v.value for v in self.ib.accountValues(self.account) if v.currency in ("USD", "")}
        need = ("NetLiquidation", "AvailableFunds", "BuyingPower", "TotalCashValue")
        if not all(k in values for k in need):
            self._call("account updates", self.ib.reqAccountUpdates, self.account)
            values = {v.tag: v.value for v in self.ib.accountValues(self.account) if v.currency in ("USD", "")}
        missing = [k for k in need if k not in values]
        if missing:
            raise BrokerError(f"IB sent no {', '.join(missing)} for {self.account}")
        return AccountValues(account=self.account, net_liquidation=float(values["NetLiquidation"]),
                             available_funds=float(values["AvailableFunds"]),
                             buying_power=float(values["BuyingPower"]), cash=float(values["TotalCashValue"]))

    def positions(self) -> list[Position]:
        self._barrier()
        return [Position(account=p.account, symbol=p.contract.symbol, quantity=float(p.position),
                         avg_cost=float(p.avgCost)) for p in self.ib.positions(self.account) if p.position]

    # --- orders ----------------------------------------------------------------------------------------------------

    def _commission(self, perm_id: int) -> float:
        return sum(float(f.commissionReport.commission or 0) for f in self.ib.fills()
                   if f.execution.permId == perm_id and f.commissionReport.execId)

    def _info(self, trade, existing: bool = False) -> OrderInfo:
        o, st = trade.order, trade.orderStatus
        perm = o.permId or st.permId
        fills = [f for f in self.ib.fills() if f.execution.permId == perm] if perm else list(trade.fills)
        filled_fills = sum(float(f.execution.shares) for f in fills)
        filled = max(float(st.filled or 0), filled_fills, float(o.filledQuantity)
                     if o.filledQuantity not in (None, ibapi.util.UNSET_DOUBLE) else 0.0)
        avg = float(st.avgFillPrice or 0)
        if not avg and filled_fills:
            avg = sum(float(f.execution.shares) * float(f.execution.price) for f in fills) / filled_fills
        qty = float(o.totalQuantity)

        def price(x):
            return None if x in (None, ibapi.util.UNSET_DOUBLE) or (isinstance(x, float) and math.isnan(x)) \
                or not x else float(x)

        return OrderInfo(order_id=int(o.orderId or st.orderId or 0), perm_id=int(perm or 0), order_ref=o.orderRef,
                         symbol=trade.contract.symbol, action=o.action, quantity=qty, order_type=o.orderType,
                         limit_price=price(o.lmtPrice), stop_price=price(o.auxPrice), status=st.status,
                         filled=filled, remaining=max(qty - filled, 0.0), avg_fill_price=avg,
                         commission=self._commission(perm) if perm else 0.0, existing=existing)

    def _trade(self, order_id: int, perm_id: int = 0):
        perm_id = perm_id or self._perm_ids.get(order_id, 0)
        if not perm_id:  # executions carry both ids (completed orders only the permId)
            for f in self.ib.fills():
                if f.execution.orderId == order_id and f.execution.clientId == self.client_id:
                    perm_id = f.execution.permId
        if perm_id:  # after a reconnect, an order completed meanwhile is known by its permId only
            for t in self.ib.trades():
                if (t.order.permId or t.orderStatus.permId) == perm_id:
                    return t
        for t in self.ib.trades():
            if t.order.orderId == order_id and t.order.clientId in (self.client_id, 0):
                return t
        for t in self.ib.trades():
            if t.order.orderId == order_id:
                return t
        return None

    def open_orders(self) -> list[OrderInfo]:
        trades = self._call("open orders", self.ib.reqAllOpenOrders)
        return [self._info(t) for t in trades if t.orderStatus.status not in _DONE]

    def completed_orders(self) -> list[OrderInfo]:
        trades = self._call("completed orders", self.ib.reqCompletedOrders, False)
        return [self._info(t) for t in trades]

    def find_order(self, order_ref: str) -> OrderInfo | None:
        """The order placed with `order_ref`, searched among open orders and today's executions (None if
        neither has it). Asks IB; does not rely on this connection's memory."""
        for t in self.ib.trades():  # this connection's own orders first (no round trip)
            if t.order.orderRef == order_ref and (t.orderStatus.status not in _DONE or t.fills):
                return self._info(t, existing=True)
        for t in self._call("open orders", self.ib.reqAllOpenOrders):
            if t.order.orderRef == order_ref and t.orderStatus.status not in _DONE:
                return self._info(t, existing=True)
        fills = [f for f in self._call("executions", self.ib.reqExecutions) if f.execution.orderRef == order_ref]
        if not fills:
            return None
        perm = fills[0].execution.permId
        for t in self.ib.trades():
            if (t.order.permId or t.orderStatus.permId) == perm:
                return self._info(t, existing=True)
        e = fills[0].execution
        shares = sum(float(f.execution.shares) for f in fills)
        avg = sum(float(f.execution.shares) * float(f.execution.price) for f in fills) / shares
        return OrderInfo(order_id=int(e.orderId), perm_id=int(perm), order_ref=order_ref,
                         symbol=fills[0].contract.symbol, action="BUY" if e.side == "BOT" else "SELL",
                         quantity=shares, order_type="", limit_price=None, stop_price=None, status="Filled",
                         filled=shares, remaining=0.0, avg_fill_price=avg, commission=self._commission(perm),
                         existing=True)

    def guard_live(self, what: str = "an order") -> None:
        if self.is_paper:
            return
        s = self.settings
        if s.trading_mode == "live" and s.live_account and s.live_account == self.account:
            log.warning("LIVE TRADING on account %s (TRADING_MODE=live, TRADEFLOW_LIVE_ACCOUNT=%s): %s",
                        self.account, s.live_account, what)
            return
        msg = (f"REFUSED {what}: account {self.account} is not a paper account (paper ids start with "
               f"{PAPER_ACCOUNT_PREFIX}) and live trading is not enabled for it, so nothing that changes the account "
               f"(place, modify, cancel, global cancel) is sent. To trade it, set TRADING_MODE=live "
               f"AND TRADEFLOW_LIVE_ACCOUNT={self.account} (now TRADING_MODE={s.trading_mode}, "
               f"TRADEFLOW_LIVE_ACCOUNT={s.live_account or 'unset'}).")
        log.critical(msg)
        raise LiveTradingRefusedError(msg)

    def place_order(self, request: OrderRequest) -> OrderInfo:
        self._ensure()
        self.guard_live(f"placing {request.action} {request.quantity:g} {request.symbol} ({request.order_ref})")
        if self._ib_lost:
            raise BrokerConnectionError(f"IB 1100: {self._ib_lost} IB Gateway cannot reach IB's servers (its "
                                        f"nightly reset or a network break): order {request.order_ref!r} not sent; "
                                        "wait for 1101/1102 (connectivity restored)")
        found = self.find_order(request.order_ref)
        if found is not None:
            log.info("order_ref %s already placed (order %s, %s); nothing sent", request.order_ref,
                     found.order_id, found.status)
            return found
        contract = self.contract(request.symbol)
        order = self._order(request)
        trade = self.ib.placeOrder(contract, order)
        log.debug("placed %s %s %s %s ref=%s as order %s", request.action, request.quantity, request.symbol,
                 request.order_type, request.order_ref, order.orderId)
        try:
            self._wait(lambda: trade.orderStatus.status in _ACKED, self.timeout,
                       f"order {order.orderId} acknowledgement")
        except BrokerTimeoutError as exc:
            raise BrokerTimeoutError(f"{exc}; the order may be working: placing the same order_ref "
                                     f"{request.order_ref!r} again is safe (it finds the order)") from exc
        except BrokerConnectionError as exc:
            return self._found_after_reconnect(request.order_ref, exc)
        self._raise_if_refused(trade)
        if trade.order.permId:
            self._perm_ids[trade.order.orderId] = trade.order.permId
        return self._info(trade)

    def _raise_if_refused(self, trade) -> None:
        """Raise IB's typed error when `trade` ended at once without a fill (IB refused it)."""
        if trade.orderStatus.status in ("Cancelled", "ApiCancelled", "Inactive") and not trade.fills:
            order_id = trade.order.orderId
            errs = [(e.errorCode, e.message) for e in trade.log if getattr(e, "errorCode", 0)]
            # a code the library takes for a warning (110: the price's tick) is not in the trade's log
            errs = errs or [(code, msg) for rid, code, msg in self._errors if rid == order_id and code < 2100]
            if errs:
                code, msg = errs[-1]
                raise typed_error(code, msg) if code != 201 else OrderRejectedError(msg, 201)
            raise OrderRejectedError(f"order {order_id} ({trade.order.orderRef}) ended {trade.orderStatus.status} "
                                     "at once")

    def _find_leg(self, order_ref: str) -> OrderInfo | None:
        """`find_order`, or the order among the completed ones (a bracket child its OCA sibling's fill cancelled is
        neither open nor executed, and must not be sent again)."""
        found = self.find_order(order_ref)
        if found is None:
            found = next((dataclasses.replace(o, existing=True) for o in self.completed_orders()
                          if o.order_ref == order_ref), None)
        return found

    def place_bracket(self, request: BracketRequest) -> BracketInfo:
        e = request.entry
        self._ensure()
        self.guard_live(f"placing the bracket {e.action} {e.quantity:g} {e.symbol} ({e.order_ref}) with its "
                        f"stop-loss {request.stop_loss.order_ref} and take-profit {request.take_profit.order_ref}")
        if self._ib_lost:
            raise BrokerConnectionError(f"IB 1100: {self._ib_lost} IB Gateway cannot reach IB's servers: the "
                                        f"bracket {e.order_ref!r} is not sent; wait for 1101/1102")
        found = [self._find_leg(r.order_ref) for r in request.legs]
        if all(f is not None for f in found):
            log.info("bracket %s already placed (orders %s); nothing sent", e.order_ref,
                     ", ".join(str(f.order_id) for f in found))
            return BracketInfo(*found, parent_id=found[0].order_id)
        contract = self.contract(e.symbol)
        if found[0] is None:
            if any(found[1:]):
                raise BrokerError(f"bracket {e.order_ref!r}: the broker lists children "
                                  f"{[f.order_ref for f in found[1:] if f]} without their entry: check the orders")
            parent = self._order(e, transmit=False)
            trades = [self.ib.placeOrder(contract, parent)]
        else:
            trade = self._trade(found[0].order_id, found[0].perm_id)
            if trade is None or trade.isDone() or trade.order.clientId not in (self.client_id, 0):
                missing = [r.order_ref for r, f in zip(request.legs, found, strict=True) if f is None]
                raise BrokerError(f"bracket {e.order_ref!r}: its entry is {found[0].status} and its children "
                                  f"{missing} are not at the broker; they can no longer be attached (only to a "
                                  "working entry of this client id): protect the position by hand")
            parent = trade.order
            trades = [trade]
        missing = [r for r, f in zip(request.legs[1:], found[1:], strict=True) if f is None]
        for i, child in enumerate(missing):
            order = self._order(child, transmit=i == len(missing) - 1)  # the last one transmits the chain
            order.parentId = parent.orderId
            trades.append(self.ib.placeOrder(contract, order))
        log.debug("placed the bracket %s as parent %s with %d child(ren)", e.order_ref, parent.orderId, len(missing))
        try:
            self._wait(lambda: all(t.orderStatus.status in _ACKED for t in trades), self.timeout,
                       f"bracket {e.order_ref} (parent {parent.orderId}) acknowledgement")
        except BrokerTimeoutError as exc:
            raise BrokerTimeoutError(f"{exc}; the legs may be working: placing the same bracket again is safe (it "
                                     "finds each leg by its orderRef)") from exc
        except BrokerConnectionError as exc:
            log.warning("connection lost before the bracket %s was acknowledged (%s); reconnecting to look it up",
                        e.order_ref, exc)
            try:
                self._ensure()
                again = [self._find_leg(r.order_ref) for r in request.legs]
            except BrokerError as exc2:
                raise BrokerConnectionError(f"{exc}; the bracket {e.order_ref!r} may have been placed and could "
                                            f"not be looked up ({exc2}): placing it again is safe") from exc2
            if not all(again):
                raise BrokerConnectionError(f"{exc}; after reconnecting the broker lists the legs "
                                            f"{[a.order_ref for a in again if a]} only: placing the bracket again "
                                            "is safe (it sends only what is missing)") from exc
            return BracketInfo(*(dataclasses.replace(a, existing=f is not None) for a, f in
                                 zip(again, found, strict=True)), parent_id=again[0].order_id)
        for t in trades:
            self._raise_if_refused(t)
            if t.order.permId:
                self._perm_ids[t.order.orderId] = t.order.permId
        infos = iter(self._info(t) for t in trades)
        legs = [f if f is not None else next(infos) for f in found]
        return BracketInfo(*legs, parent_id=int(parent.orderId))

    def modify_quantity(self, order_id: int, quantity: int) -> OrderInfo:
        self._ensure()
        self.guard_live(f"changing order {order_id} to {quantity:g} shares")
        trade = self._trade(order_id)
        if trade is None or trade.isDone():
            self._call("open orders", self.ib.reqAllOpenOrders)
            trade = self._trade(order_id) or trade
        if trade is None:
            raise OrderRejectedError(f"OrderId {order_id} that needs to be modified is not found.", 10147)
        if trade.isDone() or float(trade.order.totalQuantity) == float(quantity):
            return self._info(trade)
        owner = trade.order.clientId
        if owner and owner != self.client_id:
            return self._as_owner(trade, lambda other: other.modify_quantity(order_id, quantity))
        refused: list[tuple[int, str]] = []

        def on_error(req_id: int, code: int, message: str, *a: object) -> None:
            if req_id == order_id and code < 2100 and code not in (110, 399):
                refused.append((code, message))

        before = float(trade.order.totalQuantity)
        self.ib.errorEvent += on_error
        try:
            trade.order.totalQuantity = float(quantity)
            self.ib.placeOrder(trade.contract, trade.order)
            self._barrier()  # IB has processed the change (and said so, or refused it) when the round trip ends
        finally:
            self.ib.errorEvent -= on_error
        if refused:
            self._call("open orders", self.ib.reqAllOpenOrders)  # the library marked it Cancelled: IB's view
            code, msg = refused[-1]
            raise OrderRejectedError(f"changing order {order_id} ({trade.order.orderRef}) from {before:g} to "
                                     f"{quantity:g} shares was refused: {msg}", code)
        log.info("order %s (%s) changed from %g to %g shares", order_id, trade.order.orderRef, before, quantity)
        return self._info(trade)

    def _order(self, request: OrderRequest, transmit: bool = True):
        """The library's Order for `request` (transmitted at once unless `transmit` is False: held at TWS until
        a child of its chain is transmitted, IB's bracket pattern)."""
        order = ibapi.Order(action=request.action, totalQuantity=float(request.quantity),
                            orderType=request.order_type, tif=request.tif, orderRef=request.order_ref,
                            account=self.account, transmit=transmit)
        if request.order_type == "LMT":
            order.lmtPrice = float(request.limit_price)  # type: ignore[arg-type]
        if request.order_type == "STP":
            order.auxPrice = float(request.stop_price)  # type: ignore[arg-type]
        if request.oca_group:
            order.ocaGroup, order.ocaType = request.oca_group, request.oca_type or 1
        return order

    def what_if(self, request: OrderRequest) -> MarginImpact:
        """IB's what-if for `request` (`whatIf=True`: IB answers with the OrderState's margin numbers and places
        nothing). Raises typed IB errors (110, 200, 201...), BrokerTimeoutError, BrokerError when the answer has
        no margin numbers."""
        contract = self.contract(request.symbol)
        order = self._order(request)
        state = self._call("what-if order", self.ib.whatIfOrder, contract, order)
        if not state:
            raise BrokerError(f"IB answered the what-if of {request.order_ref!r} without an order state")

        def num(name: str) -> float:
            v = _state_num(getattr(state, name, None))
            if v is None:
                raise BrokerError(f"IB's what-if answer for {request.order_ref!r} has no {name} "
                                  f"({getattr(state, name, None)!r})")
            return v

        return MarginImpact(
            init_margin_before=num("initMarginBefore"), init_margin_change=num("initMarginChange"),
            init_margin_after=num("initMarginAfter"), maint_margin_before=num("maintMarginBefore"),
            maint_margin_change=num("maintMarginChange"), maint_margin_after=num("maintMarginAfter"),
            equity_with_loan_before=num("equityWithLoanBefore"),
            equity_with_loan_change=num("equityWithLoanChange"),
            equity_with_loan_after=num("equityWithLoanAfter"),
            commission=_state_num(getattr(state, "commission", None)),
            warning=str(getattr(state, "warningText", "") or ""))

    def _found_after_reconnect(self, order_ref: str, lost: BrokerConnectionError) -> OrderInfo:
        """The order just sent with `order_ref` when the connection broke before its acknowledgement: reconnect
        and look it up (open orders, today's executions). Raises BrokerConnectionError when the broker does not
        list it, or the reconnect fails: it was then most likely not placed, and nothing is sent again here."""
        log.warning("connection lost before order_ref %s was acknowledged (%s); reconnecting to look it up",
                    order_ref, lost)
        try:
            self._ensure()
            found = self.find_order(order_ref)
        except BrokerError as exc:
            raise BrokerConnectionError(f"{lost}; the order {order_ref!r} may have been placed and could not be "
                                        f"looked up ({exc}): placing the same order_ref again is safe (it finds "
                                        "the order)") from exc
        if found is None:
            raise BrokerConnectionError(f"{lost}; after reconnecting, the broker lists no order {order_ref!r}: it "
                                        "was not placed (placing the same order_ref again is safe)") from lost
        if found.perm_id:
            self._perm_ids[found.order_id] = found.perm_id
        return dataclasses.replace(found, existing=False)  # sent by this call, not before it

    def cancel_order(self, order_id: int, timeout: float | None = None) -> OrderInfo:
        self._ensure()
        self.guard_live(f"cancelling order {order_id}")
        trade = self._trade(order_id)
        if trade is None:
            self._call("open orders", self.ib.reqAllOpenOrders)
            trade = self._trade(order_id)
        if trade is None:
            raise OrderRejectedError(f"OrderId {order_id} that needs to be cancelled is not found.", 10147)
        owner = trade.order.clientId
        if not trade.isDone() and owner and owner != self.client_id:
            return self._cancel_as_owner(trade, timeout)
        if not trade.isDone():
            self.ib.cancelOrder(trade.order)
            self._wait(trade.isDone, timeout or self.timeout, f"cancel of order {order_id}")
        return self._info(trade)

    def _cancel_as_owner(self, trade, timeout: float | None) -> OrderInfo:
        """Cancel an order placed by another client id through a short connection with that id: IB's
        cancelOrder only acts on orders of the connection's own client id (deployments have distinct ids, and
        e.g. ema-entry cancels the stop that equity-snapshot placed). Raises BrokerConnectionError when the
        owner's client id is connected elsewhere at that moment (only it can cancel the order then)."""
        return self._as_owner(trade, lambda other: other.cancel_order(int(trade.order.orderId), timeout))

    def _as_owner(self, trade, act) -> OrderInfo:
        """`act(broker)` on a short connection with the client id that placed `trade` (only that id may cancel or
        change an order at IB). Raises BrokerConnectionError when that id could not connect."""
        owner, order_id = int(trade.order.clientId), int(trade.order.orderId)
        perm_id = int(trade.order.permId or trade.orderStatus.permId or 0)
        log.info("order %s (permId %s) belongs to client %s: acting on it through that client id", order_id,
                 perm_id, owner)
        other = IBBroker(self.host, self.port, owner, settings=self.settings, timeout=self.timeout,
                         connect_timeout=self.connect_timeout, connect_attempts=self.connect_attempts,
                         backoff=self.backoff, max_client_ids=1, account=self._account)
        try:
            with other:
                info = act(other)
        except BrokerConnectionError as exc:
            raise BrokerConnectionError(f"order {order_id} (permId {perm_id}) was placed by client id {owner}, "
                                        f"the only one allowed to cancel or change it, and that id could not "
                                        f"connect: {exc}", exc.code) from exc
        self._call("open orders", self.ib.reqAllOpenOrders)  # our view of the order follows the change
        return info

    def cancel_all_orders(self, timeout: float | None = None) -> list[OrderInfo]:
        self._ensure()
        self.guard_live("a global cancel (every open order of the account)")
        were_open = self.open_orders()
        if were_open:
            self._call("global cancel", self.ib.reqGlobalCancel)
            limit = timeout or self.timeout
            deadline = time.monotonic() + limit
            while self.open_orders():
                if time.monotonic() > deadline:
                    raise BrokerTimeoutError(f"global cancel: orders still open after {limit:g} s")
                self.ib.waitOnUpdate(timeout=0.25)
        return were_open

    def wait_for_fill(self, order_id: int, timeout: float) -> OrderInfo:
        deadline = time.monotonic() + timeout
        self._ensure()
        trade = self._trade(order_id)
        if trade is None:
            raise BrokerError(f"order {order_id} is not known to this connection")

        def done() -> bool:
            if not trade.isDone():
                return False
            if trade.orderStatus.status != "Filled":
                return True
            perm = trade.order.permId
            fills = [f for f in self.ib.fills() if f.execution.permId == perm]
            shares = sum(float(f.execution.shares) for f in fills)
            return shares >= float(trade.order.totalQuantity) and all(f.commissionReport.execId for f in fills)

        perm_id = trade.order.permId or trade.orderStatus.permId
        while True:
            try:
                self._wait(done, max(0.0, deadline - time.monotonic()), f"fill of order {order_id}")
                break
            except BrokerConnectionError:
                if time.monotonic() >= deadline:
                    raise
                self._ensure()  # a reconnect re-reads open orders, completed orders and today's executions
                trade = self._trade(order_id, perm_id) or trade
        info = self._info(trade)
        if info.status != "Filled":
            raise OrderNotFilledError(f"order {order_id} ended {info.status} with {info.filled:g} of "
                                      f"{info.quantity:g} shares filled")
        return info

    def executions(self) -> list[Execution]:
        got = self._call("executions", self.ib.reqExecutions)
        stored = {f.execution.execId: f for f in self.ib.fills()}
        out = []
        for f in got:
            e = f.execution
            s = stored.get(e.execId, f)
            cr = s.commissionReport
            t = e.time if e.time.tzinfo else e.time.replace(tzinfo=timezone.utc)
            out.append(Execution(exec_id=e.execId, order_id=int(e.orderId), perm_id=int(e.permId),
                                 order_ref=e.orderRef, symbol=f.contract.symbol,
                                 side="BUY" if e.side == "BOT" else "SELL", shares=float(e.shares),
                                 price=float(e.price), time=t.astimezone(NY), commission=_reported(cr.commission),
                                 realized_pnl=_reported(cr.realizedPNL), account=e.acctNumber))
        return out

    # --- market data ----------------------------------------------------------------------------------------------

    def historical_bars(self, symbol: str, bar_size: str, duration: str, end: datetime | None = None,
                        regular_hours: bool = True) -> pd.DataFrame:
        if bar_size not in BAR_SIZES:
            raise ValueError(f"bar_size must be one of {BAR_SIZES}")
        if end is not None and end.tzinfo is None:
            raise ValueError("end must be timezone-aware")
        contract = self.contract(symbol)
        with self.pacer.lock:
            wait = self.pacer.wait_time(time.monotonic())
            if wait > self.timeout:
                raise PacingViolationError(f"historical data pacing: next request allowed in {wait:.0f} s", None)
            if wait > 0:
                log.info("historical data pacing: waiting %.1f s", wait)
                time.sleep(wait)
            self.pacer.record(time.monotonic())
        what = "TRADES"
        bars = self._call(f"historical {symbol} {bar_size} {duration}", self.ib.reqHistoricalData, contract,
                          endDateTime=end or "", durationStr=duration, barSizeSetting=bar_size,
                          whatToShow=what, useRTH=regular_hours, formatDate=2)
        if not bars:
            return empty_bars()
        stamps = []
        for b in bars:
            d = b.date
            if isinstance(d, datetime):
                stamps.append(pd.Timestamp(d if d.tzinfo else d.replace(tzinfo=timezone.utc)).tz_convert(NY))
            else:
                stamps.append(pd.Timestamp(d).tz_localize(NY))
        idx = pd.DatetimeIndex(stamps, name="timestamp")
        df = pd.DataFrame({"open": [float(b.open) for b in bars], "high": [float(b.high) for b in bars],
                           "low": [float(b.low) for b in bars], "close": [float(b.close) for b in bars],
                           "volume": [float(b.volume) for b in bars]}, index=idx)
        return df[~df.index.duplicated(keep="last")].sort_index()

    def _snapshot(self, contract):
        tickers = self._call("market data", self.ib.reqTickers, contract)
        return tickers[0] if tickers else None

    def historical_requests_available(self) -> int:
        with self.pacer.lock:
            self.pacer.wait_time(time.monotonic())  # forgets the requests that left the window
            return max(0, self.pacer.limit - len(self.pacer.times))

    def current_price(self, symbol: str) -> Quote:
        contract = self.contract(symbol)
        delayed = False
        self.ib.reqMarketDataType(1)
        try:
            t = self._snapshot(contract)
        except MarketDataError as exc:
            log.info("no live market data for %s (%s); asking for delayed data", symbol, exc)
            t = None
        if t is None or _price_of(t) is None:
            self.ib.reqMarketDataType(3)
            delayed = True
            try:
                t = self._snapshot(contract)
            finally:
                self.ib.reqMarketDataType(1)
        price = _price_of(t) if t is not None else None
        if price is None:
            raise MarketDataError(f"no price for {symbol} (live nor delayed)", None)
        return Quote(symbol=symbol.upper(), price=price, bid=_num(t.bid), ask=_num(t.ask), last=_num(t.last),
                     close=_num(t.close), delayed=delayed or getattr(t, "marketDataType", 1) in (3, 4))

    def vix(self) -> float:
        return self.current_price("VIX").price


def _num(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _state_num(x) -> float | None:
    """A number of IB's OrderState (sent as text; '' or UNSET_DOUBLE when IB has none): float or None."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and abs(v) < ibapi.util.UNSET_DOUBLE else None


def _reported(x) -> float:
    """A commission report's amount, USD; 0.0 when absent or IB's 'unset' (it sends the largest double as the
    realized P&L of an opening fill)."""
    try:
        v = float(x or 0)
    except (TypeError, ValueError):
        return 0.0
    return v if math.isfinite(v) and v != ibapi.util.UNSET_DOUBLE else 0.0


def _price_of(t) -> float | None:
    last = _num(t.last)
    if last is not None:
        return last
    bid, ask = _num(t.bid), _num(t.ask)
    if bid is not None and ask is not None:
        return (bid + ask) / 2
    return _num(t.close)
