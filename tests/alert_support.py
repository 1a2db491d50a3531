"""A local notification target for the alert tests: an HTTP server on 127.0.0.1 (ephemeral port) recording the
JSON bodies POSTed to it (a webhook block posts {"text", "subject", "body"}; Apprise's json:// posts
{"title", "message", "type", ...}) and the paths of GET requests (heartbeat pings)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    """Records POSTed JSON bodies in `bodies` and GET paths in `pings`; `url` is http://127.0.0.1:PORT/hook."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.pings: list[str] = []
        self.times: list[float] = []  # time.time() of each body, for messages when a test fails
        received, pings, times = self.bodies, self.pings, self.times

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length", 0))
                received.append(json.loads(self.rfile.read(length) or b"{}"))
                times.append(time.time())
                self.send_response(200)
                self.end_headers()

            def do_GET(self):  # noqa: N802
                pings.append(self.path)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = f"{self.base}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def texts(self) -> list[str]:
        """Each notification as one string (subject/title and body/message)."""
        return [" ".join(str(b.get(k, "")) for k in ("subject", "title", "body", "message")) for b in self.bodies]

    def about(self, words: str) -> list[str]:
        return [t for t in self.texts() if words in t]

    def close(self) -> None:
        self.server.shutdown()
