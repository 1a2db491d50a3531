"""A real browser for UI tests: Debian's Chromium, headless, driven over the DevTools protocol (a WebSocket;
the `websockets` package comes with Prefect). `.ci/run` installs Chromium when it is missing.

    with Browser.start(tmp_path) as browser:
        page = browser.open("http://127.0.0.1:4200/runs")
        page.wait_for("document.body.innerText.includes('ema-entry')", timeout=60)
        page.screenshot(tmp_path / "runs.png")

Everything binds 127.0.0.1; the browser's profile lives in a temporary folder; `close()` ends the process.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def chromium_path() -> str | None:
    """The Chromium binary on the PATH (Debian names it `chromium`), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class BrowserError(RuntimeError):
    """The browser did not start, a page did not answer, or a condition was not met in time (the message says
    what the page showed)."""


@dataclass
class Page:
    """One tab, spoken to over its DevTools WebSocket."""

    ws: Any
    ids: Any = field(default_factory=lambda: itertools.count(1))

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-able)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def wait_for(self, expression: str, timeout: float = 60.0, poll: float = 0.25) -> Any:
        """Poll a JavaScript expression until it is truthy; returns its value.

        Raises:
            BrowserError: not truthy within `timeout` s (with the start of the page's text).
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
            except BrowserError:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                text = self.evaluate("document.body ? document.body.innerText : ''") or ""
                raise BrowserError(f"not true within {timeout:g} s: {expression}; the page shows: {text[:1500]!r}")
            time.sleep(poll)

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def screenshot(self, path: Path) -> Path:
        """A PNG of the viewport (full page height up to 4000 px)."""
        height = min(int(self.evaluate("document.documentElement.scrollHeight") or 900), 4000)
        self.call("Emulation.setDeviceMetricsOverride", width=1400, height=max(height, 900), deviceScaleFactor=1,
                  mobile=False)
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path


@dataclass
class Browser:
    """A headless Chromium process with its DevTools endpoint on 127.0.0.1 (a free port)."""

    proc: subprocess.Popen
    port: int
    pages: list[Page] = field(default_factory=list)

    @classmethod
    def start(cls, profile: Path, timeout: float = 60.0) -> "Browser":
        binary = chromium_path()
        if binary is None:
            raise BrowserError("chromium is not installed (apt-get install chromium; .ci/run does it)")
        profile.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", f"--user-data-dir={profile}",
             "--window-size=1400,900", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None:
                raise BrowserError(f"chromium exited with {proc.returncode} at start")
            if time.monotonic() > deadline:
                proc.kill()
                raise BrowserError(f"chromium did not open its DevTools port within {timeout:g} s")
            time.sleep(0.1)
        return cls(proc, int(port_file.read_text().split()[0]))

    def open(self, url: str) -> Page:
        """A new tab at `url`."""
        from websockets.sync.client import connect

        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/json/new?{url}", method="PUT")
        with urllib.request.urlopen(req, timeout=30) as resp:
            target = json.loads(resp.read())
        page = Page(connect(target["webSocketDebuggerUrl"], max_size=64 * 2**20, open_timeout=30))
        page.call("Page.enable")
        page.call("Runtime.enable")
        self.pages.append(page)
        return page

    def close(self) -> None:
        for page in self.pages:
            try:
                page.ws.close()
            except Exception:  # noqa: BLE001 - the process is ended below anyway
                pass
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
