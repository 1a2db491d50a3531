"""The paper exchange's admin interface: JSON lines over a loopback TCP port, and a client for it.

Each request is one JSON object on one line, `{"cmd": NAME, "token": TOKEN, ...arguments}`; each reply is one
JSON object on one line, `{"ok": true, ...}` or `{"ok": false, "error": "..."}`. Several requests may share a
connection. The token is the exchange's admin token (`PaperExchange.admin_token`: TRADEFLOW_PAPER_ADMIN_TOKEN,
else the file `<state file>.admin-token` the exchange creates, mode 0600, else a random one for an exchange
without a state file); a request without the right token is refused and its connection closed. A line longer
than 64 KiB closes the connection.

Commands:
- `status`: clock (ISO, America/New_York), speed, account values (USD), positions, open orders, connections.
- `set_clock {"time": ISO-8601 with offset}`; `step {"seconds": N}`; `run {"speed": X}`; `pause`.
  After the clock moves, open orders are matched and clients told, before the reply is sent.
- `reject_next {"code": 201, "message": "..."}`: the next order placed is rejected with that IB error.
- `partial_fill {"fraction": 0.5}`: the next fill takes that fraction of the remaining quantity.
- `delay {"seconds": S}`: every request is answered S seconds late until `delay {"seconds": 0}`.
- `drop {"client_id": N}` (or no client_id for all): abort client connections.
- `market_data {"realtime": bool}`: whether live market data is "subscribed" (else IB error 354).
- `no_data {"symbol": "VIX", "quotes": true, "history": true}`: the symbol's quotes (live and delayed) get
  IB error 354 and its historical requests IB error 162 (no data), until `clear_faults`.
- `clear_faults`.
- The gateway's life: `restart {"seconds": S}` (every connection dropped, the API port closed for S exchange
  seconds; orders, positions and executions kept; also daily at `restart_time`), `logout` (closed until
  `login`), `login`, `farm {"name": "usfarm"|"ushmds"|"secdefnj", "ok": bool}` (2103/2104, 2105/2106,
  2157/2158 to every client; while broken, quotes get 354, history 162, contract details 200),
  `connectivity {"ok": bool, "data_lost": bool}` (1100; 1101 or 1102; while lost, orders get 201).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import secrets
import socket
import threading
from pathlib import Path
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .server import PaperExchange

MAX_LINE = 64 * 1024
_TOKENS: dict[int, str] = {}  # admin port -> token, of the exchanges running in this process
_TOKENS_LOCK = threading.Lock()


def token_file(state_file: Path | str) -> Path:
    """Where an exchange with `state_file` keeps its admin token."""
    p = Path(state_file)
    return p.with_name(p.name.removesuffix(".json") + ".admin-token")


def load_or_create_token(state_file: Path | str | None, configured: str | None = None) -> str:
    """The admin token: `configured` if given, else the token file beside `state_file` (created with a random
    token, mode 0600, when missing), else a random token (an exchange without a state file)."""
    if configured:
        return configured
    if state_file is None:
        return secrets.token_hex(16)
    path = token_file(state_file)
    if path.exists():
        text = path.read_text().strip()
        if text:
            return text
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


def register_token(port: int, token: str | None) -> None:
    """Remember (token) or forget (None) the token of an exchange of this process listening on admin `port`."""
    with _TOKENS_LOCK:
        if token is None:
            _TOKENS.pop(port, None)
        else:
            _TOKENS[port] = token


def token_for(port: int) -> str | None:
    """The admin token for `port`: an exchange of this process, else TRADEFLOW_PAPER_ADMIN_TOKEN, else the token
    file of the configured state file (core.settings), else None."""
    with _TOKENS_LOCK:
        if port in _TOKENS:
            return _TOKENS[port]
    from core.settings import get_settings

    s = get_settings()
    if s.paper_admin_token:
        return s.paper_admin_token
    path = token_file(s.paper_exchange_state_file)
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _execute(ex: "PaperExchange", req: dict) -> dict:
    cmd = req.get("cmd")
    gateway = _gateway_command(ex, cmd, req)
    if gateway is not None:
        return gateway
    faults = ex.engine.faults
    if cmd == "status":
        return ex.status()
    if cmd == "set_clock":
        t = datetime.fromisoformat(req["time"])
        if t.tzinfo is None:
            raise ValueError("time needs a UTC offset, e.g. 2026-03-02T09:30:00-05:00")
        if t.timestamp() < ex.now():
            raise ValueError("the clock never goes backwards")
        ex.clock.set(t)
        ex.on_clock_moved()
        return ex.status()
    if cmd == "step":
        seconds = float(req["seconds"])
        if seconds < 0:
            raise ValueError("the clock never goes backwards")
        ex.clock.step(seconds)
        ex.on_clock_moved()
        return ex.status()
    if cmd == "run":
        ex.clock.run(float(req["speed"]))
        return ex.status()
    if cmd == "pause":
        ex.clock.pause()
        ex.on_clock_moved()
        return ex.status()
    if cmd == "reject_next":
        faults.reject_next = {"code": int(req.get("code", 201)),
                              "message": req.get("message", "Order rejected - reason: rejected by fault injection")}
        return {}
    if cmd == "partial_fill":
        fraction = float(req.get("fraction", 0.5))
        if not 0 < fraction < 1:
            raise ValueError("fraction must be between 0 and 1")
        faults.partial_fraction = fraction
        return {}
    if cmd == "delay":
        faults.reply_delay = max(0.0, float(req.get("seconds", 0)))
        return {}
    if cmd == "drop":
        cid = req.get("client_id")
        return {"dropped": ex.drop_connections(None if cid is None else int(cid))}
    if cmd == "market_data":
        ex.realtime = bool(req.get("realtime", True))
        return {}
    if cmd == "no_data":
        kinds = {k for k in ("quotes", "history") if req.get(k, True)}
        faults.no_data[str(req["symbol"]).upper()] = kinds
        return {}
    if cmd == "clear_faults":
        faults.no_data.clear()
        faults.reject_next = None
        faults.partial_fraction = None
        faults.reply_delay = 0.0
        return {}
    raise ValueError(f"unknown command {cmd!r}")


def _gateway_command(ex: "PaperExchange", cmd: Any, req: dict) -> dict | None:
    """The gateway's life: restart, logout, login, farm, connectivity (None: not one of these)."""
    if cmd == "restart":
        seconds = float(req.get("seconds", ex.gateway.restart_seconds))
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        return {"dropped": ex.go_down(str(req.get("reason", "a restart")), seconds)}
    if cmd == "logout":
        return {"dropped": ex.go_down("logged out: IB Gateway needs a login", None)}
    if cmd == "login":
        ex._spawn(ex.come_up())
        return {}
    if cmd == "farm":
        ex.set_farm(str(req["name"]), bool(req.get("ok", True)))
        return {}
    if cmd == "connectivity":
        ex.set_connectivity(bool(req.get("ok", True)), bool(req.get("data_lost", False)))
        return {}
    return None


async def handle_admin(ex: "PaperExchange", reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Serve one admin connection (runs on the exchange's loop, so commands see a consistent state)."""
    try:
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                break
            except asyncio.LimitOverrunError:
                writer.write(b'{"ok": false, "error": "request line too long"}\n')
                break
            try:
                req = json.loads(line)
                if not isinstance(req, dict) or not hmac.compare_digest(str(req.pop("token", "")),
                                                                        ex.admin_token):
                    writer.write(b'{"ok": false, "error": "admin token required (the exchange\'s admin-token '
                                 b'file, or TRADEFLOW_PAPER_ADMIN_TOKEN)"}\n')
                    await writer.drain()
                    break
                reply: dict[str, Any] = {"ok": True, **_execute(ex, req)}
            except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            writer.write((json.dumps(reply, default=str) + "\n").encode())
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


class AdminError(RuntimeError):
    """The exchange refused an admin command."""


class AdminClient:
    """Blocking client of the admin interface (one short connection per call).

    Example: `AdminClient(port).set_clock(datetime(2026, 3, 2, 10, 0, tzinfo=NY))`.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0, token: str | None = None):
        self.host, self.port, self.timeout = host, port, timeout
        self.token = token

    def call(self, cmd: str, **args: Any) -> dict:
        """Send one command; returns the reply without `ok`. The token is the one given, else `token_for(port)`.
        Raises AdminError, OSError."""
        token = self.token or token_for(self.port) or ""
        with socket.create_connection((self.host, self.port), timeout=self.timeout) as s:
            s.sendall((json.dumps({"cmd": cmd, "token": token, **args}, default=str) + "\n").encode())
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        reply = json.loads(buf)
        if not reply.pop("ok", False):
            raise AdminError(reply.get("error", "admin command failed"))
        return reply

    def status(self) -> dict:
        return self.call("status")

    def set_clock(self, t: datetime) -> dict:
        """Move the clock to the aware datetime `t` (never backwards); fills happen before this returns."""
        return self.call("set_clock", time=t.isoformat())

    def step(self, seconds: float) -> dict:
        return self.call("step", seconds=seconds)

    def run(self, speed: float) -> dict:
        return self.call("run", speed=speed)

    def pause(self) -> dict:
        return self.call("pause")

    def reject_next(self, code: int = 201, message: str | None = None) -> dict:
        args: dict[str, Any] = {"code": code}
        if message:
            args["message"] = message
        return self.call("reject_next", **args)

    def partial_fill(self, fraction: float = 0.5) -> dict:
        return self.call("partial_fill", fraction=fraction)

    def delay(self, seconds: float) -> dict:
        return self.call("delay", seconds=seconds)

    def drop(self, client_id: int | None = None) -> dict:
        return self.call("drop", **({} if client_id is None else {"client_id": client_id}))

    def market_data(self, realtime: bool) -> dict:
        return self.call("market_data", realtime=realtime)

    def no_data(self, symbol: str, quotes: bool = True, history: bool = True) -> dict:
        """Make `symbol`'s quotes (IB 354) and/or historical bars (IB 162) unavailable until clear_faults."""
        return self.call("no_data", symbol=symbol, quotes=quotes, history=history)

    def clear_faults(self) -> dict:
        return self.call("clear_faults")

    def restart(self, seconds: float) -> dict:
        """Drop every connection and close the API port for `seconds` of exchange time (the daily restart)."""
        return self.call("restart", seconds=seconds)

    def logout(self) -> dict:
        return self.call("logout")

    def login(self) -> dict:
        return self.call("login")

    def farm(self, name: str, ok: bool) -> dict:
        return self.call("farm", name=name, ok=ok)

    def connectivity(self, ok: bool, data_lost: bool = False) -> dict:
        return self.call("connectivity", ok=ok, data_lost=data_lost)
