"""The dead-man's switch: a ping to TRADEFLOW_HEARTBEAT_URL at the end of every deployment run.

A notification cannot come from a dead Prefect server (its automations are what notify). A service outside this
machine that expects a ping on a schedule (healthchecks.io and its self-hosted version, Uptime Kuma's push
monitors, Cronitor, ...) notifies when pings stop: the server, the worker, the machine or its network gone.

- a completed (or skipped) run: GET URL;
- a failed run: GET URL + "/fail" (healthchecks' failure signal; the query string, if any, is kept after it).

Pings are best effort: a ping that fails (service down, timeout) is logged without the URL (a secret: it carries
the check's token) and never fails the run.
"""

from __future__ import annotations

import logging
import urllib.parse
import urllib.request

log = logging.getLogger(__name__)

PING_TIMEOUT_SECONDS = 5.0


def ping_url(url: str, failed: bool) -> str:
    """The URL to GET: `url`, or for a failure its path + '/fail' (query kept).

    Raises:
        ValueError: `url` is not http(s) (the message shows the scheme only).
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"TRADEFLOW_HEARTBEAT_URL: scheme {parts.scheme!r} is not http or https")
    if not failed:
        return url
    return urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/fail"))


def ping(url: str | None, failed: bool, timeout: float = PING_TIMEOUT_SECONDS) -> bool:
    """GET the heartbeat (see the module docstring); True when the service answered 2xx, False otherwise (also
    when `url` is None). Never raises; logs a failure without the URL."""
    if not url:
        return False
    try:
        with urllib.request.urlopen(ping_url(url, failed), timeout=timeout) as response:  # noqa: S310 - http(s) only
            return 200 <= response.status < 300
    except Exception as exc:  # noqa: BLE001 - best effort; the URL must not reach the log
        reason = getattr(exc, "reason", None) or getattr(exc, "code", None) or type(exc).__name__
        log.warning("heartbeat ping (%s) failed: %s", "fail" if failed else "success", reason)
        return False
