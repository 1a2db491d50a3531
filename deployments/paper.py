"""Is the configured broker this project's paper exchange, or a TWS / IB Gateway?

"No TWS is configured" means: IBKR_HOST is this machine (127.0.0.1 / localhost) and IBKR_PORT is the paper
exchange's port (TRADEFLOW_PAPER_PORT; both 7497 by default, TWS's paper port), and on that port either nothing
listens (so `tradeflow up` starts the paper exchange there) or the paper exchange itself does (its admin port,
TRADEFLOW_PAPER_ADMIN_PORT, answers). Anything else (another port, another host, or a TWS already listening on
7497) is a TWS / IB Gateway, which `tradeflow up` never replaces.
"""

from __future__ import annotations

from typing import Any

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def paper_exchange_running(settings: Any) -> bool:
    """True when the paper exchange's admin port answers a status request."""
    from core.paper_exchange import AdminClient, AdminError

    try:
        AdminClient(settings.paper_admin_port, timeout=2.0).status()
        return True
    except (OSError, AdminError, ValueError):
        return False


def paper_exchange_configured(settings: Any) -> bool:
    """True when no TWS is configured (see the module docstring): the broker is, or will be, the paper exchange."""
    from deployments.processes import port_open

    if settings.ibkr_host not in LOOPBACK or settings.ibkr_port != settings.paper_port:
        return False
    return not port_open(settings.ibkr_host, settings.ibkr_port) or paper_exchange_running(settings)
