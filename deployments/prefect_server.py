"""The Prefect server process `tradeflow up` (and the tests) start: Prefect's own app (`create_app`, the REST API,
the UI and the background services, as `prefect server start` runs it in the foreground with one worker) behind a
Host header check, on 127.0.0.1.

Why not `prefect server start` itself: Prefect 3.8 has settings for authentication
(`PREFECT_SERVER_API_AUTH_STRING`, a Basic auth string checked on every API request but /health and /ready) and
for CORS (`PREFECT_SERVER_CORS_ALLOWED_ORIGINS`), but none for the Host header. Without that check a web page in
the trader's browser can reach the loopback server through DNS rebinding (its own name resolving to 127.0.0.1).
Starlette's `TrustedHostMiddleware` answers 400 to any Host but the loopback names.

    python -m deployments.prefect_server --host 127.0.0.1 --port 4200 [--allowed-host NAME ...]

Settings are Prefect's (PREFECT_HOME, PREFECT_SERVER_*), read from the environment as `prefect server start`
reads them; `deployments.processes.LocalServer.env` sets them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

LOOPBACK_NAMES = ("127.0.0.1", "localhost")
"""The Host header values the server answers (with any port)."""


def build_app(allowed_hosts: Sequence[str]):
    """Prefect's server app (API, UI, services) wrapped in a Host header check allowing `allowed_hosts`."""
    from prefect.server.api.server import create_app
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    return TrustedHostMiddleware(create_app(final=True), allowed_hosts=list(allowed_hosts))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.prefect_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--allowed-host", action="append", default=[],
                        help="a further Host header value to answer (the loopback names always are)")
    args = parser.parse_args(argv)

    import uvicorn
    from prefect.settings import get_current_settings

    prefect = get_current_settings()
    allowed = [*LOOPBACK_NAMES, *([args.host] if args.host not in LOOPBACK_NAMES else []), *args.allowed_host]
    uvicorn.run(build_app(allowed), host=args.host, port=args.port,
                timeout_keep_alive=prefect.server.api.keepalive_timeout,
                log_level=str(prefect.server.logging_level).lower())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
