"""The paper exchange server: TWS API on a loopback port, an admin interface on another.

`PaperExchange` runs an asyncio server on 127.0.0.1 speaking the TWS API at server version 157 or 176 (the
client's range is intersected with the configured version): the handshake, startApi, every request ib_insync's
`connect()` issues, and the requests the Broker uses (contract details, historical data, market data
snapshots and streams, orders, cancels, executions, positions, account updates and summaries, completed
orders, current time, ids, market data type, P&L, head timestamps, matching symbols, market rules). A request it
does not implement is answered at once with the error IB would give (`UNSUPPORTED`); nothing goes unanswered.

The admin interface (see `admin.py`) is JSON lines on a second loopback port. Use `start()`/`stop()` to run
the exchange on a background thread (tests, sync code), or `await serve_forever()` on a loop of your own
(the CLI).
"""

from __future__ import annotations

import asyncio
import logging
import re
import struct
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from datetime import time as dt_time
from pathlib import Path
from typing import Any

from . import protocol as P
from .admin import load_or_create_token
from .clock import ExchangeClock
from .engine import Engine, EngineConfig, Execution, Order, OrderError, exec_time_str
from .market_data import NY, BadRequestError, MarketData

log = logging.getLogger("tradeflow.paper_exchange")

KNOWN_CON_IDS = {"AAPL": 265598, "TSLA": 76792991, "SPY": 756733, "SMH": 225130744, "VIX": 13455763}
INDICES = {"VIX": ("CBOE", "CBOE Volatility Index")}
PRIMARY = {"SPY": "ARCA", "SMH": "NASDAQ"}

MAX_MESSAGE_BYTES = 1 << 20
"""A client message announcing more than this (1 MiB; a placeOrder is about 1 KiB) closes its connection."""
MAX_CONNECTIONS = 32
"""Client connections at once (TWS and IB Gateway take 32 API clients)."""
HANDSHAKE_TIMEOUT = 10.0
"""Real seconds a client has to send the magic, its version range and startApi."""

FARMS = {"usfarm": (2104, 2103), "ushmds": (2106, 2105), "secdefnj": (2158, 2157)}
"""Data farms: (code when OK, code when broken), as IB Gateway reports them."""
FARM_TEXT = {
    2104: "Market data farm connection is OK", 2103: "Market data farm connection is broken",
    2106: "HMDS data farm connection is OK", 2105: "HMDS data farm connection is broken",
    2158: "Sec-def data farm connection is OK", 2157: "Sec-def data farm connection is broken",
    1100: "Connectivity between IB and Trader Workstation has been lost.",
    1101: "Connectivity between IB and Trader Workstation has been restored - data lost.",
    1102: "Connectivity between IB and Trader Workstation has been restored - data maintained.",
}


class MessageTooLarge(Exception):
    """A client announced a message longer than MAX_MESSAGE_BYTES."""


@dataclass
class Gateway:
    """The life of the IB Gateway the exchange stands in for.

    up: whether the API port is open; down_until: exchange epoch seconds when it opens again (None while down:
    until an explicit login); reason: why it is down. connected: whether the gateway reaches IB's servers
    (1100 when lost, 1101/1102 when restored). farms: data farm -> OK. restart_time/restart_seconds: the daily
    restart (New York wall time) and how long the port stays closed.
    """

    restart_time: dt_time | None = None
    restart_seconds: float = 120.0
    up: bool = True
    down_until: int | None = None
    reason: str = ""
    connected: bool = True
    farms: dict[str, bool] = field(default_factory=lambda: {f: True for f in FARMS})
    restarts: int = 0

    def as_dict(self) -> dict:
        return {"up": self.up, "reason": self.reason, "down_until": self.down_until, "connected": self.connected,
                "farms": dict(self.farms), "restarts": self.restarts,
                "restart_time": self.restart_time.strftime("%H:%M") if self.restart_time else None,
                "restart_seconds": self.restart_seconds}


_MARKET_DATA_CACHE: dict[str, MarketData] = {}
_CACHE_LOCK = threading.Lock()


def shared_market_data(data_dir: Path | str) -> MarketData:
    """One MarketData per directory per process (the files are read once)."""
    key = str(Path(data_dir).resolve())
    with _CACHE_LOCK:
        md = _MARKET_DATA_CACHE.get(key)
        if md is None:
            md = _MARKET_DATA_CACHE[key] = MarketData(key)
        return md


def instrument(symbol: str) -> P.Instrument:
    """The contract the exchange serves for `symbol` (stocks SMART/USD, VIX a CBOE index)."""
    symbol = symbol.upper()
    con_id = KNOWN_CON_IDS.get(symbol) or 100_000_000 + (int.from_bytes(symbol.encode()[:6], "big") % 99_999_999)
    if symbol in INDICES:
        exch, name = INDICES[symbol]
        return P.Instrument(symbol, con_id, "IND", exch, exch, "USD", name)
    return P.Instrument(symbol, con_id, "STK", "SMART", PRIMARY.get(symbol, "NASDAQ"), "USD", symbol)


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    sv: int = 0
    client_id: int | None = None
    md_type: int = 1
    positions_sub: bool = False
    account_sub: bool = False
    multi_subs: set[int] = field(default_factory=set)
    summary_subs: dict[int, list[str]] = field(default_factory=dict)
    mkt_subs: dict[int, tuple[str, bool]] = field(default_factory=dict)  # reqId -> (symbol, delayed)
    last_ticks: dict[int, float] = field(default_factory=dict)
    hist_subs: dict[int, "_BarSub"] = field(default_factory=dict)  # keepUpToDate historical requests
    pnl_subs: dict[int, str | None] = field(default_factory=dict)  # reqId -> symbol (None: the account)
    last_pnl: dict[int, tuple] = field(default_factory=dict)

    def send(self, fields: list[Any]) -> None:
        if not self.writer.is_closing():
            self.writer.write(P.frame(fields))


@dataclass
class _BarSub:
    """A keepUpToDate historical request: symbol, bar size, duration, date format and the bars sent."""

    symbol: str
    bar_size: str
    duration: str
    fmt_date: str
    sent: dict[int, tuple] = field(default_factory=dict)  # bar start -> row sent


def _parse_end(s: str) -> float | None:
    """endDateTime of reqHistoricalData: '' (now), 'YYYYMMDD HH:MM:SS UTC|Zone', 'YYYYMMDD-HH:MM:SS' (UTC)."""
    s = (s or "").strip()
    if not s:
        return None
    from zoneinfo import ZoneInfo
    m = re.match(r"^(\d{8})[ -](\d{2}:\d{2}:\d{2})(?:\s+(\S+))?$", s)
    if not m:
        if re.fullmatch(r"\d{8}", s):
            return datetime.strptime(s + " 23:59:59", "%Y%m%d %H:%M:%S").replace(tzinfo=NY).timestamp()
        raise BadRequestError(f"invalid endDateTime {s!r}")
    naive = datetime.strptime(m.group(1) + " " + m.group(2), "%Y%m%d %H:%M:%S")
    zone = m.group(3) or ("UTC" if "-" in s[8:9] else "America/New_York")
    tz = timezone.utc if zone in ("UTC", "GMT") else ZoneInfo(zone)
    return naive.replace(tzinfo=tz).timestamp()


def _bar_row(b: tuple, bar_size: str, fmt_date: str) -> tuple:
    """One bar of MarketData.history as historicalData writes it: (date, open, high, low, close, volume, wap,
    count); daily bars dated YYYYMMDD, others 'YYYYMMDD HH:MM:SS America/New_York' or epoch (formatDate 2)."""
    start, session, o, h, l, c, v = b
    if bar_size == "1 day":
        ds = str(session)
    elif fmt_date == "2":
        ds = str(start)
    else:
        ds = datetime.fromtimestamp(start, NY).strftime("%Y%m%d %H:%M:%S") + " America/New_York"
    return (ds, o, h, l, c, v, round((h + l + c) / 3, 4), 1)


NO_REPLY = {11, 13, 14, 23, 51, 53, 56, 57, 70, 75, 89, 90, 98, 101, 103}
"""Cancel requests (and setServerLogLevel) to which IB sends nothing."""

_NOT_FA = "Error validating request.-'vd' : cause - FA data operations ignored for non FA customers."
UNSUPPORTED: dict[int, tuple[str, int | None, int, str]] = {
    # msgId: (request, index of its reqId field, IB error code, IB's text ('' for the generic 321 text))
    10: ("reqMktDepth", 2, 10089, "Requested market data requires additional subscription for API. Market depth "
                                  "is not available from the paper exchange."),
    97: ("reqTickByTickData", 1, 10089, "Requested market data requires additional subscription for API. "
                                        "Tick-by-tick data is not available from the paper exchange."),
    50: ("reqRealTimeBars", 2, 420, "Invalid Real-time Query:No market data permissions for real-time bars on the "
                                    "paper exchange."),
    52: ("reqFundamentalData", 2, 430, "We are sorry, but fundamentals data for the security specified is not "
                                       "available."),
    88: ("reqHistogramData", 1, 162, "Historical Market Data Service error message:histogram data is not "
                                     "available from the paper exchange"),
    96: ("reqHistoricalTicks", 1, 162, "Historical Market Data Service error message:historical ticks are not "
                                       "available from the paper exchange"),
    18: ("requestFA", None, 321, _NOT_FA), 19: ("replaceFA", 4, 321, _NOT_FA),
    21: ("exerciseOptions", 2, 321, ""), 22: ("reqScannerSubscription", 1, 321, ""),
    24: ("reqScannerParameters", None, 321, ""), 54: ("calculateImpliedVolatility", 2, 321, ""),
    55: ("calculateOptionPrice", 2, 321, ""), 65: ("verifyRequest", None, 321, ""),
    66: ("verifyMessage", None, 321, ""), 67: ("queryDisplayGroups", 2, 321, ""),
    68: ("subscribeToGroupEvents", 2, 321, ""), 69: ("updateDisplayGroup", 2, 321, ""),
    72: ("verifyAndAuthRequest", None, 321, ""), 73: ("verifyAndAuthMessage", None, 321, ""),
    84: ("reqNewsArticle", 1, 321, ""), 100: ("reqWshMetaData", 1, 321, ""), 102: ("reqWshEventData", 1, 321, ""),
}
"""Requests the paper exchange does not implement: each is answered at once with the error IB gives an account
without that data or permission (10089 / 420 / 430 / 162), or IB's 321 validation error."""


class PaperExchange:
    """A TWS-API-speaking paper exchange.

    Args:
        data_dir: bars directory (shared/data/bars format).
        start: the clock's start (timezone-aware); ignored when `state_file` holds a clock and `resume` is true.
        speed: None/0 for a clock moved only through the admin interface, X to run X times real time.
        port / admin_port: loopback ports; 0 picks free ones (read `.port` / `.admin_port` after start).
        server_version: 157 or 176 (the highest the server agrees to).
        state_file: JSON file that keeps the account across restarts (None: in memory only).
        config: account parameters (starting cash USD, max leverage, account id, commission schedule).
        realtime: whether live market data is "subscribed"; when false, live requests get IB error 354 and
            clients must ask for delayed data (reqMarketDataType 3).
        admin_token: the admin port's token (default: the token file beside `state_file`, see admin.py).
        restart_time / restart_seconds: the gateway's daily restart (New York wall time; None: never) and how
            long (exchange seconds) the port stays closed then.
        max_connections: client connections accepted at once (IB: 32); more are closed at once.
        handshake_timeout: real seconds a client has to complete the handshake and startApi.
    """

    def __init__(self, data_dir: Path | str, *, start: datetime, speed: float | None = None, port: int = 0,
                 admin_port: int = 0, server_version: int = 176, state_file: Path | str | None = None,
                 config: EngineConfig | None = None, realtime: bool = True, resume: bool = False,
                 admin_token: str | None = None, restart_time: dt_time | None = None,
                 restart_seconds: float = 120.0, max_connections: int = MAX_CONNECTIONS,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT, host: str = "127.0.0.1"):
        if server_version not in P.SUPPORTED_SERVER_VERSIONS:
            raise ValueError(f"server_version must be one of {P.SUPPORTED_SERVER_VERSIONS}")
        self.market = shared_market_data(data_dir)
        self.engine = Engine(self.market, config or EngineConfig(), Path(state_file) if state_file else None)
        if resume and self.engine.clock is not None:
            start = datetime.fromtimestamp(self.engine.clock, timezone.utc)
        elif self.engine.clock is not None and start.timestamp() < self.engine.clock:
            log.warning("the clock starts at %s, before the state file's clock %s: executions may appear to be in "
                        "the future", start.isoformat(),
                        datetime.fromtimestamp(self.engine.clock, NY).isoformat())
        self.clock = ExchangeClock(start, speed)
        self.host = host  # the TWS API's address: loopback, or the gateway host's own (`tradeflow up --role gateway`)
        self.port = port
        self.admin_port = admin_port
        self.server_version = server_version
        self.realtime = realtime
        self._conns: list[_Conn] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task] = set()
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._last_account_push = 0.0
        self.admin_token = load_or_create_token(state_file, admin_token)
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self.gateway = Gateway(restart_time=restart_time, restart_seconds=restart_seconds)
        self._tws_server: asyncio.AbstractServer | None = None
        self._last_clock = self.now()

    # --- lifecycle -------------------------------------------------------------------------------------------

    @property
    def account(self) -> str:
        return self.engine.config.account

    def now(self) -> int:
        return int(self.clock.now())

    async def _open_tws_port(self) -> None:
        srv = await asyncio.start_server(self._handle_client, self.host, self.port)
        self.port = srv.sockets[0].getsockname()[1]
        self._tws_server = srv

    async def _start_servers(self) -> None:
        self._stopping = asyncio.Event()
        await self._open_tws_port()
        from .admin import MAX_LINE, handle_admin, register_token
        adm = await asyncio.start_server(lambda r, w: handle_admin(self, r, w), "127.0.0.1", self.admin_port,
                                         limit=MAX_LINE)
        self.admin_port = adm.sockets[0].getsockname()[1]
        register_token(self.admin_port, self.admin_token)
        self._servers = [adm]
        self._spawn(self._ticker())
        self.engine.clock = self.now()
        log.info("paper exchange on %s:%d (admin %d), server version %d, account %s, clock %s", self.host,
                 self.port, self.admin_port, self.server_version, self.account, self.clock.now_dt().isoformat())

    async def serve_forever(self) -> None:
        """Run on the current event loop until `request_stop()` (or cancellation)."""
        self._loop = asyncio.get_running_loop()
        await self._start_servers()
        self._ready.set()
        try:
            assert self._stopping is not None
            await self._stopping.wait()
        finally:
            await self._shutdown()

    def request_stop(self) -> None:
        """Ask a running exchange to stop (thread-safe)."""
        if self._loop and self._stopping and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stopping.set)
            except RuntimeError:  # the loop closed meanwhile: already stopped
                pass

    async def _shutdown(self) -> None:
        from .admin import register_token
        register_token(self.admin_port, None)
        if self._tws_server is not None:
            self._servers.append(self._tws_server)
        for s in self._servers:
            s.close()
        for c in list(self._conns):
            c.writer.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for s in self._servers:
            await s.wait_closed()
        self.engine.save()

    def start(self, timeout: float = 10.0) -> "PaperExchange":
        """Run on a background thread; returns once listening (then `.port`/`.admin_port` are set)."""
        def run() -> None:
            try:
                asyncio.run(self.serve_forever())
            except BaseException as exc:  # pragma: no cover - surfaced to start()
                self._start_error = exc
                self._ready.set()

        self._thread = threading.Thread(target=run, name="paper-exchange", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("paper exchange did not start")
        if self._start_error:
            raise self._start_error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop a background exchange and wait for its thread (the state file is saved)."""
        self.request_stop()
        if self._thread:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> "PaperExchange":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, coro) -> asyncio.Task:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    async def _ticker(self) -> None:
        """While the clock runs, fill what it reaches and push streaming ticks (every 50 ms real time)."""
        while True:
            await asyncio.sleep(0.05)
            if self.clock.speed:
                self.on_clock_moved()
            self._gateway_tick()

    def on_clock_moved(self) -> None:
        """Match open orders against the new clock and tell clients (called on the loop)."""
        now = self.now()
        self._gateway_schedule(self._last_clock, now)
        self._last_clock = now
        fills = self.engine.advance(now)
        self._publish_fills(fills, now)
        self._push_streams(now)
        self._push_bar_updates(now)
        self._push_pnl(now)
        # prices moved: re-send account values (a running clock at most once a real second)
        mono = asyncio.get_running_loop().time()
        if not fills and (not self.clock.speed or mono - self._last_account_push >= 1.0):
            self._push_account(now)
            self._last_account_push = mono

    # --- connections -----------------------------------------------------------------------------------------

    async def _handshake(self, conn: _Conn) -> bool:
        """The magic, the version range and startApi; False when the client is refused (and to be closed)."""
        reader, writer = conn.reader, conn.writer
        magic = await reader.readexactly(4)
        if magic != b"API\0":
            log.warning("not a TWS API client (%r); closing", magic)
            return False
        body = await self._read_msg(reader)
        m = re.match(r"v(\d+)(?:\.\.(\d+))?", body.decode(errors="replace"))
        if not m:
            log.warning("bad version range %r; closing", body)
            return False
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        sv = min(hi, self.server_version)
        if sv < lo or sv < P.MIN_CLIENT_VERSION:
            log.warning("client versions %d..%d outside what the exchange speaks; closing", lo, hi)
            return False
        conn.sv = sv
        conn.send(P.handshake(sv, self.clock.now_dt().strftime("%Y%m%d %H:%M:%S UTC")))
        await writer.drain()
        while conn.client_id is None:  # startApi (anything else first is ignored, as before)
            fields = P.split_fields(await self._read_msg(reader))
            if fields and self._dispatch(conn, fields) is False:
                await writer.drain()  # the refusal (326) reaches the client before the close
                return False
            await writer.drain()
        return True

    async def _handle_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(reader, writer)
        task = asyncio.current_task()
        if task:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if len(self._conns) >= self.max_connections or not self.gateway.up:
            log.warning("refused a connection: %s", "the gateway is down (%s)" % self.gateway.reason
                        if not self.gateway.up else f"{self.max_connections} connections already")
            writer.transport.abort()
            return
        self._conns.append(conn)
        try:
            try:
                ok = await asyncio.wait_for(self._handshake(conn), self.handshake_timeout)
            except asyncio.TimeoutError:
                log.warning("handshake not completed within %g s; closing", self.handshake_timeout)
                return
            if not ok:
                return
            self._greet(conn)
            while True:
                body = await self._read_msg(reader)
                fields = P.split_fields(body)
                if not fields:
                    continue
                delay = self.engine.faults.reply_delay
                if delay > 0:
                    await asyncio.sleep(delay)
                try:
                    keep = self._dispatch(conn, fields)
                except Exception:
                    log.exception("error handling %s", fields[:3])
                    keep = True
                await writer.drain()
                if keep is False:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except MessageTooLarge as exc:
            log.warning("%s; closing the connection (client %s)", exc, conn.client_id)
        except asyncio.CancelledError:
            pass
        finally:
            if conn in self._conns:
                self._conns.remove(conn)
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, asyncio.CancelledError):
                pass

    @staticmethod
    async def _read_msg(reader: asyncio.StreamReader) -> bytes:
        (n,) = struct.unpack(">I", await reader.readexactly(4))
        if n > MAX_MESSAGE_BYTES:
            raise MessageTooLarge(f"a message of {n} bytes announced (at most {MAX_MESSAGE_BYTES})")
        return await reader.readexactly(n)

    def drop_connections(self, client_id: int | None = None) -> int:
        """Abort client connections (all, or those of one client id); returns how many."""
        n = 0
        for c in list(self._conns):
            if client_id is None or c.client_id == client_id:
                c.writer.transport.abort()
                n += 1
        return n

    def connections(self) -> list[dict]:
        return [{"client_id": c.client_id, "server_version": c.sv} for c in self._conns]

    def _conn_of(self, client_id: int) -> _Conn | None:
        for c in self._conns:
            if c.client_id == client_id:
                return c
        return None

    # --- dispatch ---------------------------------------------------------------------------------------------

    def _dispatch(self, conn: _Conn, f: list[str]) -> bool:
        msg_id = int(f[0])
        if conn.client_id is None and msg_id != 71:
            log.warning("request %d before startApi; ignored", msg_id)
            return True
        handler = self._handlers.get(msg_id)
        if handler is not None:
            return handler(self, conn, f) is not False
        if msg_id in NO_REPLY:
            return True
        name, pos, code, text = UNSUPPORTED.get(msg_id, (f"message {msg_id}", None, 321, ""))
        req_id = -1
        if pos is not None and len(f) > pos:
            try:
                req_id = int(f[pos])
            except ValueError:
                req_id = -1
        text = text or (f"Error validating request.-'{msg_id}' : cause - {name} is not supported by the paper "
                        "exchange")
        log.warning("request %s (%d) is not implemented: answered with IB error %d", name, msg_id, code)
        conn.send(P.error(conn.sv, req_id, code, text))
        return True

    def _start_api(self, conn: _Conn, f: list[str]) -> bool:
        client_id = int(f[2])
        if self._conn_of(client_id) is not None:
            conn.send(P.error(conn.sv, -1, 326, "Unable to connect as the client id is already in use. "
                                                 "Retry with a unique client id."))
            return False
        conn.client_id = client_id
        conn.send(P.managed_accounts([self.account]))
        conn.send(P.next_valid_id(self.engine.next_order_id))
        return True

    def _greet(self, conn: _Conn) -> None:
        """What IB Gateway says after startApi: the state of IB's servers and of each data farm."""
        if not self.gateway.connected:
            conn.send(P.error(conn.sv, -1, 1100, FARM_TEXT[1100]))
        for farm in FARMS:
            code = FARMS[farm][0 if self.gateway.farms[farm] else 1]
            conn.send(P.error(conn.sv, -1, code, f"{FARM_TEXT[code]}:{farm}"))

    def _req_ids(self, conn: _Conn, f: list[str]) -> None:
        conn.send(P.next_valid_id(self.engine.next_order_id))

    def _req_managed_accounts(self, conn: _Conn, f: list[str]) -> None:
        conn.send(P.managed_accounts([self.account]))

    def _req_head_timestamp(self, conn: _Conn, f: list[str]) -> None:
        req_id = int(f[1])
        sym = self._symbol_of(P.ContractRef.parse(f, 2))
        if sym is None:
            conn.send(P.error(conn.sv, req_id, 200, "No security definition has been found for the request"))
            return
        series = self.market.get(sym)
        first = min(int(x.start[0]) for x in series.series.values() if len(x))
        fmt_date = f[17] if len(f) > 17 else "1"
        stamp = str(first) if fmt_date == "2" else \
            datetime.fromtimestamp(first, NY).strftime("%Y%m%d %H:%M:%S") + " America/New_York"
        conn.send(P.head_timestamp(req_id, stamp))

    def _req_matching_symbols(self, conn: _Conn, f: list[str]) -> None:
        req_id, pattern = int(f[1]), f[2].upper().strip()
        found = []
        if pattern:
            names = sorted({p.stem.upper() for k in ("5m", "1h", "daily")
                            for p in (self.market.root / k).glob("*.csv")})
            found = [instrument(n) for n in names if n.startswith(pattern)][:16]
        conn.send(P.symbol_samples(conn.sv, req_id, found))

    def _req_market_rule(self, conn: _Conn, f: list[str]) -> None:
        rule = int(f[1])
        if rule != 26:
            conn.send(P.error(conn.sv, -1, 321, f"Error validating request.-'91' : cause - unknown market rule {rule}"))
            return
        conn.send(P.market_rule(26, [(0.0, 0.01)]))  # US stocks: 0.01 at every price >= 1 USD

    def _req_sec_def_opt_params(self, conn: _Conn, f: list[str]) -> None:
        conn.send([76, int(f[1])])  # no options are listed on the paper exchange: the End at once

    def _req_soft_dollar_tiers(self, conn: _Conn, f: list[str]) -> None:
        conn.send([77, int(f[1]), 0])

    def _req_family_codes(self, conn: _Conn, f: list[str]) -> None:
        conn.send([78, 1, self.account, ""])

    def _req_mkt_depth_exchanges(self, conn: _Conn, f: list[str]) -> None:
        conn.send([80, 0])

    def _req_smart_components(self, conn: _Conn, f: list[str]) -> None:
        conn.send([82, int(f[1]), 0])

    def _req_news_providers(self, conn: _Conn, f: list[str]) -> None:
        conn.send([85, 0])

    def _req_historical_news(self, conn: _Conn, f: list[str]) -> None:
        conn.send([87, int(f[1]), 0])  # historicalNewsEnd, hasMore false: no news providers subscribed

    def _req_user_info(self, conn: _Conn, f: list[str]) -> None:
        conn.send([107, int(f[1]), ""])

    def _req_positions_multi(self, conn: _Conn, f: list[str]) -> None:
        req_id = int(f[2])
        for sym, pos in self.engine.positions.items():
            if pos.quantity != 0:
                conn.send([71, 1, req_id, self.account, *instrument(sym).c11(), pos.quantity,
                           round(pos.avg_cost, 8), ""])
        conn.send([72, 1, req_id])

    # P&L ---------------------------------------------------------------------------------------------------

    def _pnl_fields(self, req_id: int, sym: str | None, now: int) -> list:
        v = self.engine.pnl(now, sym)
        if sym is None:
            return P.pnl(req_id, v["daily"], v["unrealized"], v["realized"])
        return P.pnl_single(req_id, v["position"], v["daily"], v["unrealized"], v["realized"], v["value"])

    def _req_pnl(self, conn: _Conn, f: list[str]) -> None:
        req_id, account = int(f[1]), f[2]
        if account and account != self.account:
            conn.send(P.error(conn.sv, req_id, 321, f"Error validating request.-'92' : cause - unknown account "
                                                    f"{account}"))
            return
        conn.pnl_subs[req_id] = None
        self._send_pnl(conn, req_id, self.now(), force=True)

    def _req_pnl_single(self, conn: _Conn, f: list[str]) -> None:
        req_id, account, con_id = int(f[1]), f[2], int(f[4] or 0)
        sym = next((s for s in self.engine.positions if instrument(s).con_id == con_id), None)
        if sym is None:
            sym = next((s for s, c in KNOWN_CON_IDS.items() if c == con_id and self.market.has(s)), None)
        if sym is None or (account and account != self.account):
            conn.send(P.error(conn.sv, req_id, 321, "Error validating request.-'94' : cause - no position or "
                                                    f"contract {con_id} in account {account or self.account}"))
            return
        conn.pnl_subs[req_id] = sym
        self._send_pnl(conn, req_id, self.now(), force=True)

    def _send_pnl(self, conn: _Conn, req_id: int, now: int, force: bool = False) -> None:
        fields = self._pnl_fields(req_id, conn.pnl_subs[req_id], now)
        if force or conn.last_pnl.get(req_id) != tuple(fields):
            conn.last_pnl[req_id] = tuple(fields)
            conn.send(fields)

    def _cancel_pnl(self, conn: _Conn, f: list[str]) -> None:
        conn.pnl_subs.pop(int(f[1]), None)
        conn.last_pnl.pop(int(f[1]), None)

    def _push_pnl(self, now: int) -> None:
        for conn in self._conns:
            for req_id in list(conn.pnl_subs):
                self._send_pnl(conn, req_id, now)

    def _req_current_time(self, conn: _Conn, f: list[str]) -> None:
        conn.send(P.current_time(self.now()))

    def _req_market_data_type(self, conn: _Conn, f: list[str]) -> None:
        conn.md_type = int(f[2] or 1)

    def _noop(self, conn: _Conn, f: list[str]) -> None:
        return None

    # contracts ------------------------------------------------------------------------------------------------

    def _symbol_of(self, c: P.ContractRef) -> str | None:
        sym = c.symbol.upper()
        if not sym and c.con_id:
            for s, cid in KNOWN_CON_IDS.items():
                if cid == c.con_id:
                    sym = s
        if not sym or not self.market.has(sym):
            return None
        ins = instrument(sym)
        if c.sec_type and c.sec_type.upper() != ins.sec_type:
            return None
        if c.con_id and c.con_id != ins.con_id:
            return None
        if c.currency and c.currency.upper() != "USD":
            return None
        return sym

    def _req_contract_details(self, conn: _Conn, f: list[str]) -> None:
        req_id = int(f[2])
        broken = self._farm_error("secdefnj")
        if broken:
            conn.send(P.error(conn.sv, req_id, 200, f"No security definition could be looked up: {broken}"))
            return
        sym = self._symbol_of(P.ContractRef.parse(f, 3))
        if sym is None:
            conn.send(P.error(conn.sv, req_id, 200, "No security definition has been found for the request"))
            return
        conn.send(P.contract_details(conn.sv, req_id, instrument(sym)))
        conn.send(P.contract_details_end(req_id))

    # historical data ----------------------------------------------------------------------------------------

    def _req_historical(self, conn: _Conn, f: list[str]) -> None:
        req_id = int(f[1])
        c = P.ContractRef.parse(f, 2)
        end_s, bar_size, duration, fmt_date = f[15], f[16], f[17], f[20]
        sym = self._symbol_of(c)
        if sym is None:
            conn.send(P.error(conn.sv, req_id, 200, "No security definition has been found for the request"))
            return
        broken = self._farm_error("ushmds")
        if broken:
            conn.send(P.error(conn.sv, req_id, 162, f"Historical Market Data Service error message:{broken}"))
            return
        if "history" in self.engine.faults.no_data.get(sym, ()):
            conn.send(P.error(conn.sv, req_id, 162, "Historical Market Data Service error message:HMDS query "
                                                    f"returned no data ({sym}: no_data fault)"))
            return
        keep = len(f) > 21 and f[21] == "1" and c.sec_type != "BAG"
        if keep and end_s.strip():
            conn.send(P.error(conn.sv, req_id, 321, "Error validating request.-'bP' : cause - End date not "
                                                    "supported with live updates"))
            return
        now = self.now()
        try:
            end = _parse_end(end_s)
            cutoff = int(min(end, now)) if end is not None else now
            bars = self.market.history(sym, bar_size, cutoff, duration)
        except BadRequestError as exc:
            conn.send(P.error(conn.sv, req_id, 321, f"Error validating request.-'bP' : cause - {exc}"))
            return
        if not bars:
            conn.send(P.error(conn.sv, req_id, 162, "Historical Market Data Service error message:HMDS query "
                                                    "returned no data"))
            return
        out = [_bar_row(b, bar_size, fmt_date) for b in bars]
        first = datetime.fromtimestamp(bars[0][0], NY).strftime("%Y%m%d %H:%M:%S")
        last = datetime.fromtimestamp(cutoff, NY).strftime("%Y%m%d %H:%M:%S")
        conn.send(P.historical_data(req_id, first, last, out))
        if keep:
            conn.hist_subs[req_id] = _BarSub(sym, bar_size, duration, fmt_date,
                                             {b[0]: row for b, row in zip(bars, out)})

    def _cancel_historical(self, conn: _Conn, f: list[str]) -> None:
        conn.hist_subs.pop(int(f[2]), None)

    def _push_bar_updates(self, now: int) -> None:
        """keepUpToDate: send the bars that changed or began since the last update (historicalDataUpdate)."""
        for conn in self._conns:
            for req_id, sub in list(conn.hist_subs.items()):
                try:
                    bars = self.market.history(sub.symbol, sub.bar_size, now, sub.duration)
                except BadRequestError:
                    continue
                last_sent = max(sub.sent) if sub.sent else 0
                for b in bars:
                    if b[0] < last_sent:
                        continue
                    row = _bar_row(b, sub.bar_size, sub.fmt_date)
                    if sub.sent.get(b[0]) != row:
                        sub.sent[b[0]] = row
                        conn.send(P.historical_data_update(req_id, row))

    # market data -------------------------------------------------------------------------------------------

    def _ticks(self, sym: str, now: int) -> tuple[float | None, float | None, float]:
        return self.market.last_price(sym, now), self.market.previous_close(sym, now), \
            self.market.session_volume(sym, now)

    def _req_mkt_data(self, conn: _Conn, f: list[str]) -> None:
        req_id = int(f[2])
        c = P.ContractRef.parse(f, 3)
        i = 15
        if c.sec_type == "BAG":
            conn.send(P.error(conn.sv, req_id, 321, "Error validating request: combos are not supported"))
            return
        dnc = f[i] == "1"
        i += 4 if dnc else 1
        snapshot = f[i + 1] == "1"
        sym = self._symbol_of(c)
        if sym is None:
            conn.send(P.error(conn.sv, req_id, 200, "No security definition has been found for the request"))
            return
        broken = self._farm_error("usfarm")
        if broken:
            conn.send(P.error(conn.sv, req_id, 354, f"Requested market data is not available: {broken}"))
            return
        if "quotes" in self.engine.faults.no_data.get(sym, ()):
            conn.send(P.error(conn.sv, req_id, 354, f"Requested market data is not subscribed ({sym}: no_data "
                                                    "fault)"))
            return
        delayed = False
        if not self.realtime:
            if conn.md_type in (3, 4):
                delayed = True
            else:
                conn.send(P.error(conn.sv, req_id, 354, "Requested market data is not subscribed. Delayed market "
                                                        "data is available (reqMarketDataType 3)."))
                return
        conn.send(P.market_data_type(req_id, 3 if delayed else 1))
        self._send_ticks(conn, req_id, sym, delayed, self.now(), force=True)
        if snapshot:
            conn.send(P.tick_snapshot_end(req_id))
        else:
            conn.mkt_subs[req_id] = (sym, delayed)

    def _send_ticks(self, conn: _Conn, req_id: int, sym: str, delayed: bool, now: int, force: bool) -> None:
        last, close, vol = self._ticks(sym, now)
        if not force and conn.last_ticks.get(req_id) == last:
            return
        conn.last_ticks[req_id] = last if last is not None else -1
        off = 65 if delayed else 0
        is_index = instrument(sym).sec_type == "IND"
        if last is not None:
            if not is_index:
                conn.send(P.tick_price(req_id, 1 + off, round(last - 0.01, 2), 100))
                conn.send(P.tick_price(req_id, 2 + off, round(last + 0.01, 2), 100))
            conn.send(P.tick_price(req_id, 68 if delayed else 4, last, 0 if is_index else 100))
        if close is not None:
            conn.send(P.tick_price(req_id, 75 if delayed else 9, close, 0))
        if not is_index:
            conn.send(P.tick_size(req_id, 74 if delayed else 8, round(vol / 100)))

    def _cancel_mkt_data(self, conn: _Conn, f: list[str]) -> None:
        conn.mkt_subs.pop(int(f[2]), None)

    def _push_streams(self, now: int) -> None:
        for conn in self._conns:
            for req_id, (sym, delayed) in list(conn.mkt_subs.items()):
                self._send_ticks(conn, req_id, sym, delayed, now, force=False)

    # orders -----------------------------------------------------------------------------------------------------

    def _view(self, o: Order, margin: P.OrderMargin | None = None) -> P.OrderView:
        held = self.engine.parent_of(o)
        why = "child" if o.is_open and held is not None and held.status != "Filled" else ""
        return P.OrderView(
            order_id=o.order_id, client_id=o.client_id, perm_id=o.perm_id, action=o.action, quantity=o.quantity,
            order_type=o.order_type, lmt_price=o.lmt_price, aux_price=o.aux_price, tif=o.tif, account=o.account,
            order_ref=o.order_ref, outside_rth=o.outside_rth, status=o.status, filled=o.filled,
            avg_fill_price=round(o.avg_fill_price, 8), last_fill_price=o.last_fill_price,
            completed_time=(datetime.fromtimestamp(o.completed_at, NY).strftime("%Y%m%d %H:%M:%S")
                            + " America/New_York") if o.completed_at else "",
            completed_status=o.completed_status, parent_id=o.parent_id, oca_group=o.oca_group,
            oca_type=o.oca_type, good_till_date=o.good_till_date, why_held=why)

    def _exec_view(self, e: Execution) -> P.ExecView:
        return P.ExecView(exec_id=e.exec_id, order_id=e.order_id, client_id=e.client_id, perm_id=e.perm_id,
                          time_str=exec_time_str(e.time), account=e.account, side=e.side, shares=e.shares,
                          price=e.price, cum_qty=e.cum_qty, avg_price=round(e.avg_price, 8),
                          order_ref=e.order_ref, commission=e.commission, realized_pnl=e.realized_pnl,
                          liquidation=e.liquidation)

    def _send_order_state(self, conn: _Conn, o: Order) -> None:
        ins = instrument(o.symbol)
        conn.send(P.open_order(conn.sv, ins, self._view(o)))
        conn.send(P.order_status(self._view(o)))

    def _place_order(self, conn: _Conn, f: list[str]) -> None:
        req = P.parse_place_order(f, conn.sv)
        assert conn.client_id is not None
        if not self.gateway.connected:  # the order cannot reach IB
            conn.send(P.error(conn.sv, req.order_id, 201, f"Order rejected - reason:{FARM_TEXT[1100]}"))
            return
        sym = self._symbol_of(req.contract) or req.contract.symbol.upper()
        now = self.now()
        common = dict(symbol=sym, action=req.action, quantity=req.quantity, order_type=req.order_type,
                      lmt_price=req.lmt_price, aux_price=req.aux_price, tif=req.tif, account=req.account,
                      good_till_date=req.good_till_date, unsupported=req.unsupported)
        try:
            if req.what_if:
                self._answer_what_if(conn, req, self.engine.what_if(now=now, **common))
                return
            o = self.engine.place(client_id=conn.client_id, order_id=req.order_id, order_ref=req.order_ref,
                                  outside_rth=req.outside_rth, now=now, parent_id=req.parent_id,
                                  transmit=req.transmit, oca_group=req.oca_group, oca_type=req.oca_type, **common)
        except OrderError as exc:
            conn.send(P.error(conn.sv, req.order_id, exc.code, exc.message))
            if exc.code == 110:  # ib_insync/ib_async take 110 for a warning: the order's end is said separately
                conn.send(P.order_status(P.OrderView(req.order_id, conn.client_id, 0, req.action, req.quantity,
                                                     req.order_type, req.lmt_price, req.aux_price, req.tif,
                                                     self.account, req.order_ref, req.outside_rth, "Cancelled",
                                                     0, 0, 0)))
            return
        if req.outside_rth and req.order_type == "MKT":
            conn.send(P.error(conn.sv, req.order_id, 2109, "Order Event Warning:Attribute 'Outside Regular Trading "
                                                           "Hours' is ignored based on the order type and "
                                                           "destination. PlaceOrder is now being processed."))
        self._send_order_state(conn, o)
        self._publish_fills(self.engine.advance(now), now)

    def _answer_what_if(self, conn: _Conn, req: P.PlaceOrderRequest, m) -> None:
        """A what-if order: openOrder with whatIf set and the margin impact in its OrderState; nothing placed."""
        margin = P.OrderMargin(
            init_before=round(m.init_before, 2), maint_before=round(m.maint_before, 2),
            equity_before=round(m.equity_before, 2), init_change=round(m.init_after - m.init_before, 2),
            maint_change=round(m.maint_after - m.maint_before, 2),
            equity_change=round(m.equity_after - m.equity_before, 2), init_after=round(m.init_after, 2),
            maint_after=round(m.maint_after, 2), equity_after=round(m.equity_after, 2),
            commission=round(m.commission, 4), warning=m.warning)
        assert conn.client_id is not None
        view = P.OrderView(req.order_id, conn.client_id, 0, req.action, req.quantity, req.order_type,
                           req.lmt_price, req.aux_price, req.tif, self.account, req.order_ref, req.outside_rth,
                           "PreSubmitted", 0, 0, 0, what_if=True, margin=margin, parent_id=req.parent_id,
                           oca_group=req.oca_group, oca_type=req.oca_type, good_till_date=req.good_till_date)
        conn.send(P.open_order(conn.sv, instrument(self._symbol_of(req.contract) or req.contract.symbol), view))

    def _tell_owner(self, o: Order) -> None:
        """openOrder + orderStatus of an order that changed without a fill (and 202 when it was cancelled)."""
        owner = self._conn_of(o.client_id)
        if owner is None:
            return
        self._send_order_state(owner, o)
        if o.status == "Cancelled":
            owner.send(P.error(owner.sv, o.order_id, 202, f"Order Canceled - reason:{o.completed_status}"))

    def _cancel_order(self, conn: _Conn, f: list[str]) -> None:
        order_id = int(f[2])
        assert conn.client_id is not None
        now = self.now()
        try:
            o = self.engine.cancel(conn.client_id, order_id, now)
        except OrderError as exc:
            conn.send(P.error(conn.sv, order_id, exc.code, exc.message))
            return
        conn.send(P.order_status(self._view(o)))
        conn.send(P.error(conn.sv, order_id, 202, "Order Canceled - reason:"))
        self._publish_fills([], now)

    def _global_cancel(self, conn: _Conn, f: list[str]) -> None:
        now = self.now()
        for o in self.engine.open_orders():
            if not o.is_open:  # cancelled with its parent meanwhile
                continue
            self.engine.cancel(o.client_id, o.order_id, now)
            owner = self._conn_of(o.client_id)
            if owner:
                owner.send(P.order_status(self._view(o)))
                owner.send(P.error(owner.sv, o.order_id, 202, "Order Canceled - reason:"))
        self._publish_fills([], now)

    def _req_open_orders(self, conn: _Conn, f: list[str]) -> None:
        for o in self.engine.open_orders(conn.client_id):
            self._send_order_state(conn, o)
        conn.send(P.open_order_end())

    def _req_all_open_orders(self, conn: _Conn, f: list[str]) -> None:
        for o in self.engine.open_orders():
            self._send_order_state(conn, o)
        conn.send(P.open_order_end())

    def _req_completed_orders(self, conn: _Conn, f: list[str]) -> None:
        for o in self.engine.completed_orders():
            conn.send(P.completed_order(conn.sv, instrument(o.symbol), self._view(o)))
        conn.send(P.completed_orders_end())

    def _req_executions(self, conn: _Conn, f: list[str]) -> None:
        """reqExecutions with its ExecutionFilter: clientId, account, time ('YYYYMMDD HH:MM:SS [zone]' or
        'YYYYMMDD-HH:MM:SS' UTC: executions at or after it), symbol, secType, exchange, side."""
        req_id = int(f[2])
        client_f, acct_f, time_f, sym_f, side_f = int(f[3] or 0), f[4], f[5].strip(), f[6].upper(), f[9].upper()
        since = None
        if time_f:
            try:
                since = int(_parse_end(time_f))
            except BadRequestError:
                conn.send(P.error(conn.sv, req_id, 321, f"Error validating request.-'bL' : cause - invalid "
                                                        f"ExecutionFilter time {time_f!r}"))
                return
        for e in self.engine.executions_on(self.now(), since):
            if client_f and e.client_id != client_f:
                continue
            if acct_f and acct_f != e.account:
                continue
            if sym_f and sym_f != e.symbol:
                continue
            if side_f and (side_f[:1] == "B") != (e.side == "BOT"):
                continue
            ev = self._exec_view(e)
            conn.send(P.exec_details(req_id, instrument(e.symbol), ev))
            conn.send(P.commission_report(ev))
        conn.send(P.exec_details_end(req_id))

    def _publish_fills(self, fills: list[tuple[Order, Execution]], now: int) -> None:
        """Tell clients about fills (execDetails, openOrder, orderStatus, commissionReport to the order's owner;
        positions and portfolio to subscribers) and about orders changed without a fill."""
        filled = {o.perm_id for o, _ in fills}
        for o in self.engine.pop_changed():
            if o.perm_id not in filled:
                self._tell_owner(o)
        if not fills:
            return
        for o, e in fills:
            owner = self._conn_of(o.client_id)
            if owner is None:
                continue
            ins = instrument(o.symbol)
            ev = self._exec_view(e)
            owner.send(P.exec_details(-1, ins, ev))
            owner.send(P.open_order(owner.sv, ins, self._view(o)))
            owner.send(P.order_status(self._view(o)))
            owner.send(P.commission_report(ev))
        symbols = {o.symbol for o, _ in fills}
        for conn in self._conns:
            if conn.positions_sub:
                for sym in symbols:
                    pos = self.engine.positions.get(sym)
                    if pos is not None:
                        conn.send(P.position(self.account, instrument(sym), pos.quantity, pos.avg_cost))
        self._push_account(now)

    # account ----------------------------------------------------------------------------------------------------

    def _account_pairs(self, now: int) -> list[tuple[str, str, str]]:
        vals = self.engine.account_values(now)
        pairs = [(k, f"{v:.2f}", "USD") for k, v in vals.items()]
        pairs.append(("CashBalance", f"{vals['CashBalance']:.2f}", "BASE"))
        pairs += [("AccountType", "INDIVIDUAL", ""), ("AccountCode", self.account, ""),
                  ("Currency", "USD", "USD"),
                  ("Leverage-S", f"{vals['GrossPositionValue'] / max(vals['NetLiquidation'], 1e-9):.2f}", "")]
        return pairs

    def _send_account_updates(self, conn: _Conn, now: int) -> None:
        for k, v, cur in self._account_pairs(now):
            conn.send(P.account_value(k, v, cur, self.account))
        for sym, pos in self.engine.positions.items():  # a closed position too: IB sends it with position 0
            p = self.engine.price(sym, now)
            conn.send(P.portfolio_value(instrument(sym), pos.quantity, p, pos.avg_cost,
                                        pos.quantity * (p - pos.avg_cost), pos.realized_pnl, self.account))
        conn.send(P.account_time(datetime.fromtimestamp(now, NY).strftime("%H:%M")))

    def _push_account(self, now: int) -> None:
        for conn in self._conns:
            if conn.account_sub:
                self._send_account_updates(conn, now)
            for req_id in conn.multi_subs:
                for k, v, cur in self._account_pairs(now):
                    conn.send(P.account_update_multi(req_id, self.account, k, v, cur))
            for req_id, tags in conn.summary_subs.items():
                self._send_summary(conn, req_id, tags, now, end=False)

    def _req_account_updates(self, conn: _Conn, f: list[str]) -> None:
        subscribe = f[2] == "1"
        conn.account_sub = subscribe
        if subscribe:
            self._send_account_updates(conn, self.now())
            conn.send(P.account_download_end(self.account))

    def _req_account_updates_multi(self, conn: _Conn, f: list[str]) -> None:
        req_id = int(f[2])
        for k, v, cur in self._account_pairs(self.now()):
            conn.send(P.account_update_multi(req_id, self.account, k, v, cur))
        conn.send(P.account_update_multi_end(req_id))
        conn.multi_subs.add(req_id)

    def _cancel_account_updates_multi(self, conn: _Conn, f: list[str]) -> None:
        conn.multi_subs.discard(int(f[2]))

    def _send_summary(self, conn: _Conn, req_id: int, tags: list[str], now: int, end: bool = True) -> None:
        pairs = {k: (v, cur) for k, v, cur in self._account_pairs(now) if cur != "BASE"}
        for tag in tags:
            if tag in pairs:
                v, cur = pairs[tag]
                conn.send(P.account_summary(req_id, self.account, tag, v, cur))
        if end:
            conn.send(P.account_summary_end(req_id))

    def _req_account_summary(self, conn: _Conn, f: list[str]) -> None:
        req_id = int(f[2])
        tags = [t for t in f[4].split(",") if t and not t.startswith("$")] if len(f) > 4 else []
        conn.summary_subs[req_id] = tags
        self._send_summary(conn, req_id, tags, self.now())

    def _cancel_account_summary(self, conn: _Conn, f: list[str]) -> None:
        conn.summary_subs.pop(int(f[2]), None)

    def _req_positions(self, conn: _Conn, f: list[str]) -> None:
        conn.positions_sub = True
        for sym, pos in self.engine.positions.items():
            if pos.quantity != 0:
                conn.send(P.position(self.account, instrument(sym), pos.quantity, pos.avg_cost))
        conn.send(P.position_end())

    def _cancel_positions(self, conn: _Conn, f: list[str]) -> None:
        conn.positions_sub = False

    _handlers = {
        1: _req_mkt_data, 2: _cancel_mkt_data, 3: _place_order, 4: _cancel_order, 5: _req_open_orders,
        6: _req_account_updates, 7: _req_executions, 8: _req_ids, 9: _req_contract_details,
        12: _noop, 15: _noop, 16: _req_all_open_orders, 17: _req_managed_accounts, 20: _req_historical,
        25: _cancel_historical, 49: _req_current_time, 74: _req_positions_multi, 78: _req_sec_def_opt_params,
        79: _req_soft_dollar_tiers, 80: _req_family_codes, 81: _req_matching_symbols, 82: _req_mkt_depth_exchanges,
        83: _req_smart_components, 85: _req_news_providers, 86: _req_historical_news, 87: _req_head_timestamp,
        91: _req_market_rule, 92: _req_pnl, 93: _cancel_pnl, 94: _req_pnl_single, 95: _cancel_pnl,
        104: _req_user_info,
        58: _global_cancel, 59: _req_market_data_type, 61: _req_positions, 62: _req_account_summary,
        63: _cancel_account_summary, 64: _cancel_positions, 71: _start_api, 76: _req_account_updates_multi,
        77: _cancel_account_updates_multi, 99: _req_completed_orders,
    }

    # --- the gateway's life (admin.py and the daily restart) ------------------------------------------------

    def go_down(self, reason: str, seconds: float | None) -> int:
        """Drop every client connection and close the API port, for `seconds` of exchange time (None: until
        `login()`). Orders, positions and the day's executions are kept. Returns the connections dropped."""
        g = self.gateway
        g.up, g.reason = False, reason
        g.down_until = None if seconds is None else int(self.now() + seconds)
        if self._tws_server is not None:
            self._tws_server.close()
            self._tws_server = None
        self.engine.save()
        n = self.drop_connections()
        log.warning("gateway down (%s) until %s; %d connection(s) dropped", reason,
                    "a login" if g.down_until is None else datetime.fromtimestamp(g.down_until, NY).isoformat(), n)
        return n

    async def come_up(self) -> None:
        """Open the API port again (after a restart or a login)."""
        g = self.gateway
        if g.up:
            return
        await self._open_tws_port()
        g.up, g.reason, g.down_until = True, "", None
        log.info("gateway up again on %s:%d", self.host, self.port)

    def _gateway_schedule(self, before: int, now: int) -> None:
        """The daily restart: when the clock passes restart_time (New York) between `before` and `now`."""
        g = self.gateway
        if g.restart_time is None or now <= before:
            return
        day = datetime.fromtimestamp(before, NY).date()
        while True:
            at = int(datetime.combine(day, g.restart_time, NY).timestamp())
            if at > now:
                break
            if at > before:
                g.restarts += 1
                self.go_down(f"the daily restart at {g.restart_time.strftime('%H:%M')} New York",
                             g.restart_seconds - (now - at))
            day += timedelta(days=1)

    def _gateway_tick(self) -> None:
        g = self.gateway
        if not g.up and g.down_until is not None and self.now() >= g.down_until:
            g.down_until = None  # once
            self._spawn(self.come_up())

    def broadcast(self, code: int, text: str) -> None:
        for conn in self._conns:
            if conn.client_id is not None:
                conn.send(P.error(conn.sv, -1, code, text))

    def set_farm(self, farm: str, ok: bool) -> None:
        """Break or restore a data farm (usfarm quotes, ushmds history, secdefnj contracts) and tell clients."""
        if farm not in FARMS:
            raise ValueError(f"farm must be one of {', '.join(FARMS)}, not {farm!r}")
        self.gateway.farms[farm] = ok
        code = FARMS[farm][0 if ok else 1]
        self.broadcast(code, f"{FARM_TEXT[code]}:{farm}")

    def set_connectivity(self, ok: bool, data_lost: bool = False) -> None:
        """IB's servers lost (1100) or restored (1101 data lost / 1102 data maintained)."""
        self.gateway.connected = ok
        code = 1100 if not ok else 1101 if data_lost else 1102
        self.broadcast(code, FARM_TEXT[code])
        if ok and data_lost:
            for conn in self._conns:
                conn.mkt_subs.clear()
                conn.hist_subs.clear()

    def _farm_error(self, farm: str) -> str | None:
        g = self.gateway
        if not g.connected:
            return FARM_TEXT[1100]
        if not g.farms[farm]:
            return f"{FARM_TEXT[FARMS[farm][1]]}:{farm}"
        return None

    # --- admin operations (called on the loop by admin.py) ---------------------------------------------------

    def status(self) -> dict:
        """Clock, account values (USD), positions (shares, avg cost USD), open orders, connections."""
        now = self.now()
        return {
            "clock": datetime.fromtimestamp(now, NY).isoformat(), "speed": self.clock.speed,
            "account": self.account, "values": self.engine.account_values(now),
            "positions": {k: {"quantity": v.quantity, "avg_cost": v.avg_cost}
                          for k, v in self.engine.positions.items() if v.quantity},
            "open_orders": [{"perm_id": o.perm_id, "order_id": o.order_id, "client_id": o.client_id,
                             "symbol": o.symbol, "action": o.action, "quantity": o.quantity,
                             "order_type": o.order_type, "order_ref": o.order_ref, "filled": o.filled}
                            for o in self.engine.open_orders()],
            "executions": len(self.engine.executions), "connections": self.connections(),
            "server_version": self.server_version, "realtime": self.realtime, "gateway": self.gateway.as_dict(),
            "account_type": self.engine.config.account_type,
        }
