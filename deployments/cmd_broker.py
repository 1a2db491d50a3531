"""`tradeflow paper-exchange` and `tradeflow validate-connection`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from datetime import datetime
from pathlib import Path


def _aware(s: str) -> datetime:
    t = datetime.fromisoformat(s)
    if t.tzinfo is None:
        raise argparse.ArgumentTypeError("needs a UTC offset, e.g. 2026-03-02T09:30:00-05:00")
    return t


def _paper_exchange(args: argparse.Namespace) -> int:
    from core.paper_exchange import EngineConfig, PaperExchange
    from core.paper_exchange.market_data import NY
    from core.settings import get_settings

    settings = get_settings()
    data_dir = Path(args.data_dir or settings.data_dir)
    if not data_dir.is_dir():
        print(f"tradeflow paper-exchange: data directory {data_dir} not found", file=sys.stderr)
        return 2
    state = Path(args.state_file or settings.paper_exchange_state_file)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ex = PaperExchange(
        data_dir, start=args.start or datetime.now().astimezone(), speed=args.speed,
        port=settings.paper_port if args.port is None else args.port,
        admin_port=settings.paper_admin_port if args.admin_port is None else args.admin_port,
        server_version=args.server_version or settings.paper_server_version, state_file=state,
        config=EngineConfig(account=settings.paper_account, initial_cash=settings.paper_initial_cash,
                            account_type=settings.paper_account_type,
                            commission_per_share=settings.commission_per_share,
                            commission_min=settings.commission_min,
                            commission_max_fraction=settings.commission_max_fraction),
        realtime=settings.paper_realtime, resume=args.start is None, admin_token=settings.paper_admin_token,
        restart_time=(datetime.strptime(settings.paper_restart_time, "%H:%M").time()
                      if settings.paper_restart_time else None),
        restart_seconds=settings.paper_restart_seconds, host=args.host)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, ex.request_stop)
        task = asyncio.ensure_future(ex.serve_forever())
        while not ex._ready.is_set() and not task.done():
            await asyncio.sleep(0.05)
        if not task.done():
            print(f"paper exchange: TWS API on {ex.host}:{ex.port}, admin on 127.0.0.1:{ex.admin_port}, "
                  f"account {ex.account}, clock {ex.clock.now_dt().astimezone(NY).isoformat()}, "
                  f"speed {ex.clock.speed or 'stopped'}, "
                  f"state {state}", flush=True)
        await task

    asyncio.run(main())
    return 0


def register_paper_exchange(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("paper-exchange", help="run the TWS-API paper exchange on loopback",
                       description="A paper exchange speaking the TWS API on 127.0.0.1 (or --host), serving real bars and "
                                   "filling orders against them. Without --speed the clock stands still at --start "
                                   "until moved through the admin port; without --start it resumes the state file's "
                                   "clock (or starts now).")
    p.add_argument("--port", type=int, default=None, help="TWS API port (default TRADEFLOW_PAPER_PORT, 7497)")
    p.add_argument("--host", default="127.0.0.1",
                   help="the TWS API's address (default 127.0.0.1; a gateway host of several: its own address); the "
                        "admin port stays on 127.0.0.1")
    p.add_argument("--admin-port", type=int, default=None, help="admin port (default TRADEFLOW_PAPER_ADMIN_PORT, 7498)")
    p.add_argument("--data-dir", default=None, help="bars directory (default TRADEFLOW_DATA_DIR)")
    p.add_argument("--start", type=_aware, default=None, help="clock start, ISO 8601 with offset")
    p.add_argument("--speed", type=float, default=None, help="exchange seconds per real second (default: stopped)")
    p.add_argument("--state-file", default=None, help="account state file (default state/paper_exchange.json)")
    p.add_argument("--server-version", type=int, choices=(157, 176), default=None)
    p.set_defaults(handler=_paper_exchange)


def _validate_connection(args: argparse.Namespace) -> int:
    from core.connection_check import run_checks
    from core.ib_broker import IBBroker
    from core.settings import get_settings

    s = get_settings()
    broker = IBBroker(timeout=args.timeout, connect_timeout=min(args.timeout, 5.0), connect_attempts=args.attempts)
    print(f"validating the TWS API at {s.ibkr_host}:{s.ibkr_port} (client id {s.ibkr_client_id}, "
          f"TRADING_MODE={s.trading_mode})")
    results = run_checks(broker, order_test=args.order_test, leverage=s.default_leverage)
    for r in results:
        print(f"{'PASS' if r.ok else 'FAIL'}  {r.name:<16} {r.seconds:6.2f} s  {r.detail}")
    failed = [r for r in results if not r.ok]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def register_validate_connection(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate-connection", help="check the connection to TWS / IB Gateway / the paper exchange",
                       description="Checks connection, market data, historical data, account data and positions "
                                   "against IBKR_HOST:IBKR_PORT; exit code 1 when any fails.")
    p.add_argument("--order-test", action="store_true",
                   help="also place a 1-share limit order far from the market and cancel it, and ask a what-if "
                        "order of the EMA entry at its default leverage (does the account type carry it?)")
    p.add_argument("--timeout", type=float, default=15.0, help="seconds per request (default 15)")
    p.add_argument("--attempts", type=int, default=2, help="connection attempts (default 2)")
    p.set_defaults(handler=_validate_connection)
