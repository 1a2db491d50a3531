"""A process on a worker host that decides an order, says so (the `ready` file), waits for `go`, then tries to send
it through the order gateway, as a flow would (tests/test_hosts_failover.py: a halt on another host must stop it).
Prints 'SENT …' or 'NOT SENT: …'; exits 0 either way, 1 on anything else."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from core.broker import OrderRequest
from core.calendar import NY
from core.controls import KillSwitch
from core.ib_broker import IBBroker
from core.journal import Journal
from core.orders import OrderGateway, TradingHaltedError, order_ref
from core.settings import get_settings
from deployments.processes import wait_for

AS_OF = dt.datetime(2025, 5, 27, 15, 57, tzinfo=NY)


def main(ready: str, go: str) -> int:
    s = get_settings()
    with IBBroker(settings=s) as broker:
        gateway = OrderGateway(broker, Journal(s.journal_path), KillSwitch(s.state_dir), run_id="hosts-probe")
        request = OrderRequest(symbol="SMH", action="BUY", quantity=10, order_ref=order_ref("mtf", "SMH", AS_OF,
                                                                                            "entry"))
        Path(ready).touch()
        wait_for(lambda: Path(go).exists(), 120, "the test to halt")
        try:
            info = gateway.submit(request, strategy="mtf", intent="entry", session=AS_OF.date(), as_of=AS_OF)
        except TradingHaltedError as exc:
            print(f"NOT SENT: {exc}", flush=True)
            return 0
        print(f"SENT {info.order_ref}", flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
