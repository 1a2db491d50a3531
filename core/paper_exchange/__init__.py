"""A paper exchange that speaks the TWS API on loopback, serves real bars and fills orders against them.

- `server.PaperExchange`: the TWS API server (start()/stop() on a thread, or serve_forever() on a loop).
- `admin.AdminClient`: the admin interface (clock, faults, the gateway's life, status; token-protected).
- `engine`: account, orders, matching, linked orders and the state file (fill rules in its docstring).
- `margin`: margin by account type (Reg T cash / Reg T margin / Portfolio Margin), as IB computes it.
- `market_data`: the bars served (derivation rules in its docstring).
- `protocol`: the wire format.
"""

from .admin import AdminClient, AdminError
from .engine import EngineConfig, commission_for
from .server import PaperExchange

__all__ = ["AdminClient", "AdminError", "EngineConfig", "PaperExchange", "commission_for"]
