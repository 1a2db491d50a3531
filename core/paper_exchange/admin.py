"""The paper exchange's admin interface: JSON lines over a loopback TCP port, and a client for it.

Each request is one JSON object on one line, `{"cmd": NAME, ...arguments}`; each reply is one JSON object on
one line, `{"ok": true, ...}` or `{"ok": false, "error": "..."}`. Several requests may share a connection.

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
"""

from __future__ import annotations

import asyncio
import json
import socket
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .server import PaperExchange


def _execute(ex: "PaperExchange", req: dict) -> dict:
    cmd = req.get("cmd")
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


async def handle_admin(ex: "PaperExchange", reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Serve one admin connection (runs on the exchange's loop, so commands see a consistent state)."""
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            try:
                req = json.loads(line)
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

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0):
        self.host, self.port, self.timeout = host, port, timeout

    def call(self, cmd: str, **args: Any) -> dict:
        """Send one command; returns the reply without `ok`. Raises AdminError, OSError."""
        with socket.create_connection((self.host, self.port), timeout=self.timeout) as s:
            s.sendall((json.dumps({"cmd": cmd, **args}, default=str) + "\n").encode())
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
