"""The signals' prediction source over HTTP: the client the flow uses (`fetch_signals`), and the local source the
project ships for demos and tests (`LocalSignalSource`, `python -m strategies.signals.source`).

The protocol (what an external source must answer):

    GET <url>?symbols=AAPL,TSLA,SMH&as_of=2026-03-03T10:30:00-05:00
    Authorization: Bearer <key>
    200 {"as_of": "...", "signals": [{"symbol": "AAPL", "signal": "BUY", "confidence": 0.83}, ...]}

A ticker without a signal is left out. 401 when the key is wrong or missing.

The local source's rule (computed from the shared 5-minute bars, `../shared/data/bars/5m/<SYMBOL>.csv`, only bars
that ended by `as_of`, of `as_of`'s session): m = the last close / the close `lookback` bars earlier - 1 (default
6 bars: a 30-minute return). m >= `buy_at` (0.2 %): BUY; m <= -`short_at` (0.4 %): SHORT; -`short_at` < m <=
-`buy_at`: SELL; otherwise no signal. Confidence = min(0.99, 0.5 + |m| / 0.01) (a 0.2 % move is 0.70). Fewer
than lookback + 1 bars in the session: no signal.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from strategies.signals.rules import Signal


class SignalSourceError(RuntimeError):
    """The source did not answer, refused the key, or answered something malformed; the message names the URL
    (never the key) and what was wrong."""


def fetch_signals(url: str, key: str | None, symbols: Sequence[str], as_of: dt.datetime,
                  timeout: float = 10.0) -> dict[str, Signal]:
    """The signals of `symbols` as of `as_of` (aware), by symbol.

    Raises:
        SignalSourceError: see the class; a signal with an unknown side or a confidence outside [0, 1] too.
    """
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    query = urllib.parse.urlencode({"symbols": ",".join(symbols), "as_of": as_of.isoformat()})
    request = urllib.request.Request(f"{url}?{query}", headers={"Accept": "application/json",
                                                                **({"Authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - the configured source
            body = json.loads(response.read().decode())
    except urllib.error.HTTPError as exc:
        hint = " (the key: TRADEFLOW_SIGNALS_API_KEY)" if exc.code in (401, 403) else ""
        raise SignalSourceError(f"signal source {url} answered HTTP {exc.code} {exc.reason}{hint}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise SignalSourceError(f"signal source {url} did not answer: {exc}") from None
    except ValueError as exc:
        raise SignalSourceError(f"signal source {url} answered something that is not JSON: {exc}") from None
    if not isinstance(body, dict) or not isinstance(body.get("signals"), list):
        raise SignalSourceError(f"signal source {url}: the answer has no list `signals`")
    out: dict[str, Signal] = {}
    wanted = {s.upper() for s in symbols}
    for item in body["signals"]:
        try:
            sig = Signal(str(item["symbol"]).upper(), str(item["signal"]).upper(), float(item["confidence"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise SignalSourceError(f"signal source {url}: bad signal {item!r}: {exc}") from None
        if sig.symbol in wanted:
            out[sig.symbol] = sig
    return out


# --- the local source ------------------------------------------------------------------------------------------

def momentum_signal(closes: Sequence[float], symbol: str, lookback: int = 6, buy_at: float = 0.002,
                    short_at: float = 0.004) -> Signal | None:
    """The local source's rule (module docstring) on a session's closes that ended by as_of (oldest first)."""
    if len(closes) < lookback + 1:
        return None
    m = float(closes[-1]) / float(closes[-1 - lookback]) - 1.0
    confidence = round(min(0.99, 0.5 + abs(m) / 0.01), 4)
    if m >= buy_at:
        return Signal(symbol, "BUY", confidence)
    if m <= -short_at:
        return Signal(symbol, "SHORT", confidence)
    if m <= -buy_at:
        return Signal(symbol, "SELL", confidence)
    return None


class LocalSignalSource:
    """An HTTP signal source on 127.0.0.1 serving `momentum_signal` of the 5-minute bars under `data_dir`.

    Args:
        data_dir: the bars folder (shared/data/bars layout).
        key: the key clients must send (`Authorization: Bearer <key>`).
        port: 0 picks a free one (see `.port` after `start`).
    """

    def __init__(self, data_dir: Path, key: str, port: int = 0, **rule: Any):
        self.data_dir, self.key, self.rule = Path(data_dir), key, rule
        self._bars: dict[str, Any] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._thread: threading.Thread | None = None
        self.requests = 0

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/signals"

    def _closes(self, symbol: str, as_of: dt.datetime) -> list[float]:
        import pandas as pd

        from core.bars import bars_path, read_bars_csv
        from core.calendar import NY

        if symbol not in self._bars:
            self._bars[symbol] = read_bars_csv(bars_path(self.data_dir, "5m", symbol))
        bars = self._bars[symbol]
        local = as_of.astimezone(NY)
        day = bars[(bars.index.date == local.date()) & (bars.index + pd.Timedelta(minutes=5) <= local)]
        return list(day["close"])

    def signals(self, symbols: Sequence[str], as_of: dt.datetime) -> list[dict[str, Any]]:
        out = []
        for symbol in symbols:
            sig = momentum_signal(self._closes(symbol, as_of), symbol, **self.rule)
            if sig is not None:
                out.append({"symbol": sig.symbol, "signal": sig.side, "confidence": sig.confidence})
        return out

    def _handler(self):
        source = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                source.requests += 1
                url = urllib.parse.urlparse(self.path)
                if url.path != "/signals":
                    return self._send(404, {"error": "GET /signals"})
                if self.headers.get("Authorization") != f"Bearer {source.key}":
                    return self._send(401, {"error": "a valid key is required"})
                q = urllib.parse.parse_qs(url.query)
                try:
                    as_of = dt.datetime.fromisoformat(q["as_of"][0])
                    if as_of.tzinfo is None:
                        raise ValueError("as_of has no timezone")
                    symbols = [s.strip().upper() for s in q["symbols"][0].split(",") if s.strip()]
                    body = {"as_of": as_of.isoformat(), "signals": source.signals(symbols, as_of)}
                except (KeyError, ValueError, OSError) as exc:
                    return self._send(400, {"error": f"{type(exc).__name__}: {exc}"})
                return self._send(200, body)

        return Handler

    def start(self) -> "LocalSignalSource":
        self._thread = threading.Thread(target=self._server.serve_forever, name="signal-source", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m strategies.signals.source [--port N]`: serve the local source (key TRADEFLOW_SIGNALS_API_KEY) on
    the data directory of the settings until Ctrl+C."""
    import argparse

    from core.settings import get_settings
    from strategies.signals.settings import get_signals_settings

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=int(urllib.parse.urlparse(get_signals_settings().api_url).port or 0))
    args = p.parse_args(argv)
    key = get_signals_settings().api_key
    if key is None:
        print("set TRADEFLOW_SIGNALS_API_KEY: the source requires a key")
        return 2
    source = LocalSignalSource(get_settings().data_dir, key.get_secret_value(), args.port).start()
    print(f"signal source on {source.url} (bars of {get_settings().data_dir})", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        source.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
