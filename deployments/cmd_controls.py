"""The kill switch and the flatten button: `tradeflow halt`, `tradeflow resume`, `tradeflow flatten`.

- `halt --reason` writes the HALT file in the state directory at once (`core.controls.KillSwitch`): from then on
  every order path refuses new orders at the moment of sending (`core.orders.OrderGateway.submit` checks it
  twice, the second time right before the broker call), in every process, including a flow run already
  deciding. Journaled in `controls` with who and why.
- `resume --reason` lifts it (journaled first).
- `flatten --reason` cancels every open order of the account (IB's global cancel, whichever client placed it),
  then closes every position with a market order through the one order path as an operator exit (strategy
  `manual`, intent `flatten`: allowed while halted), waits for the fills (a market order outside regular hours
  waits for the next open), and journals in `controls` what it cancelled, sent and got. It does not halt: halt
  first when the strategies must not enter again. On a non-paper account without the live opt-in
  (TRADING_MODE=live and TRADEFLOW_LIVE_ACCOUNT) it is refused as a whole before anything is cancelled.

`who` is the login name unless `--who` names someone. Exit codes: 0 done, 1 something failed (said why), 2 usage.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import uuid
from typing import Any


def _now() -> dt.datetime:
    from core.calendar import NY

    return dt.datetime.now(NY)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", required=True, help="why (journaled)")
    p.add_argument("--who", default=None, help="who (default: the login name)")


def register_controls(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("halt", help="stop every order path at once (the kill switch)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(p)
    p.set_defaults(handler=_halt)
    p = sub.add_parser("resume", help="lift the kill switch", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(p)
    p.set_defaults(handler=_resume)
    p = sub.add_parser("flatten", help="cancel all open orders and close all positions", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(p)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each fill (default 30)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(handler=_flatten)


def _parts() -> tuple[Any, Any, Any]:
    from core.controls import KillSwitch
    from core.journal import Journal
    from core.settings import get_settings

    settings = get_settings()
    return (settings, Journal(settings.journal_path, lock_timeout=settings.journal_lock_timeout_seconds),
            KillSwitch(settings.state_dir))


def _who(args: argparse.Namespace) -> str:
    from core.controls import operator

    return args.who or operator()


def _show_in_ui(switch: Any, settings: Any) -> str:
    """Mirror the halt file in the Prefect UI (Variable `tradeflow_kill_switch`); a line saying where."""
    import os

    api = os.environ.get("PREFECT_API_URL", "")  # not Prefect's profile: importing Prefect would slow the halt
    if not api:
        return "the Prefect UI was not told (PREFECT_API_URL is unset); the next flow run shows it there"
    from deployments.processes import api_healthy
    from tasks.ui import KILL_SWITCH_VARIABLE, sync_kill_switch

    if not api_healthy(api) or sync_kill_switch(switch, settings.state_dir) is None:
        return f"the Prefect UI could not be told (no Prefect API answered at {api}); the next flow run shows it there"
    return f"the Prefect UI shows it (Variables: {KILL_SWITCH_VARIABLE})"


def _halt(args: argparse.Namespace) -> int:
    from core.controls import HaltError, HaltNotJournaledError

    settings, journal, switch = _parts()
    try:
        info = switch.halt(journal, _who(args), args.reason, _now())
    except (HaltError, HaltNotJournaledError) as exc:  # the message says whether trading is halted
        print(f"tradeflow halt: {exc}", file=sys.stderr)
        return 1
    print(f"{info.describe()}\nhalt file {switch.path} (state dir {settings.state_dir}); {_show_in_ui(switch, settings)}"
          "\nEvery order path now refuses new orders (checked when each order is sent). "
          "`tradeflow flatten --reason ...` closes positions; `tradeflow resume --reason ...` lifts the halt.")
    return 0


def _resume(args: argparse.Namespace) -> int:
    from core.controls import ResumeError
    from core.journal import UNAVAILABLE

    settings, journal, switch = _parts()
    try:
        was = switch.resume(journal, _who(args), args.reason, _now())
    except ResumeError as exc:
        print(f"tradeflow resume: FAILED: {exc}", file=sys.stderr)
        return 1
    except UNAVAILABLE as exc:
        halted = switch.current()
        state = f"trading is still halted ({halted.describe()})" if halted else "trading was not halted"
        print(f"tradeflow resume: FAILED: {type(exc).__name__}: {exc}; {state}", file=sys.stderr)
        return 1
    print(f"resumed: lifted '{was.describe()}'" if was else "trading was not halted; the resume is journaled")
    print(f"halt file {switch.path} removed (state dir {settings.state_dir}); {_show_in_ui(switch, settings)}")
    return 0


def flatten_account(broker: Any, journal: Any, switch: Any, *, who: str, reason: str, at: dt.datetime,
                    fill_timeout: float = 30.0, out=sys.stdout) -> dict[str, Any]:
    """Cancel every open order, close every position with a market order (operator exits through
    `core.orders.OrderGateway`), wait up to `fill_timeout` s for each fill, journal it all in `controls`.

    Args:
        broker: a connected Broker.
        at: when the operator acted (aware); the orders' `as_of` and refs use the broker's clock.

    Returns:
        {"cancelled": [...], "orders": [...], "errors": [...]}: what was cancelled and sent (symbol, action,
        shares, order_ref, status, filled, avg_fill_price USD) and what failed. Journaled in any case.

    Raises:
        core.broker.LiveTradingRefusedError: a non-paper account without the live opt-in; raised before anything
            is cancelled or sent (journaled as an error first).
        core.broker.BrokerError: the broker failed outside one position's order (journaled as an error first).
    """
    from core.broker import BrokerError, OrderRequest
    from core.calendar import next_session, session_for
    from core.orders import OrderGateway, order_ref

    report: dict[str, Any] = {"cancelled": [], "orders": [], "errors": []}
    gateway = OrderGateway(broker=broker, journal=journal, kill_switch=switch, run_id=f"flatten-{uuid.uuid4()}")
    try:
        # refused as a whole, before anything is cancelled, when the account may not also be sold (a live account
        # without the double opt-in): a global cancel alone would leave every position without its stop
        broker.guard_live("tradeflow flatten (a global cancel, then market orders closing every position)")
        cancelled = broker.cancel_all_orders()
        for o in cancelled:
            report["cancelled"].append({"symbol": o.symbol, "action": o.action, "quantity": o.quantity,
                                        "order_ref": o.order_ref, "perm_id": o.perm_id})
            print(f"cancelled {o.action} {o.quantity:g} {o.symbol} ({o.order_ref or 'no ref'})", file=out)
        now = broker.current_time()
        session = session_for(now) or next_session(now.date())
        for p in broker.positions():
            shares = abs(p.quantity)
            if shares != int(shares):
                report["errors"].append(f"{p.symbol}: {p.quantity} shares is not a whole number; close it by hand")
                continue
            request = OrderRequest(symbol=p.symbol, action="SELL" if p.quantity > 0 else "BUY",
                                   quantity=int(shares), order_ref=order_ref("manual", p.symbol, now, "flatten"))
            try:
                info = gateway.submit(request, strategy="manual", intent="flatten", session=session.date,
                                      as_of=now, operator=True)
                if not info.existing:
                    try:
                        info = broker.wait_for_fill(info.order_id, fill_timeout)
                    except BrokerError as exc:  # still working (market closed) or ended unfilled
                        print(f"{p.symbol}: not filled yet: {exc}", file=out)
                        info = next((o for o in broker.open_orders() if o.order_ref == request.order_ref), info)
                    gateway.record_fills(info, "manual")
            except BrokerError as exc:
                report["errors"].append(f"{request.action} {request.quantity} {p.symbol}: {exc}")
                print(f"FAILED {request.action} {request.quantity} {p.symbol}: {exc}", file=out)
                continue
            report["orders"].append({"symbol": p.symbol, "action": request.action, "shares": request.quantity,
                                     "order_ref": request.order_ref, "status": info.status, "filled": info.filled,
                                     "avg_fill_price": info.avg_fill_price or None})
            print(f"{request.action} {request.quantity} {p.symbol}: {info.status}, filled {info.filled:g}"
                  + (f" at {info.avg_fill_price:.2f}" if info.avg_fill_price else ""), file=out)
    except BrokerError as exc:
        report["errors"].append(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        with journal.transaction() as tx:
            tx.record_control("flatten", who, reason, at, details=report)
    return report


def _flatten(args: argparse.Namespace) -> int:
    from core.broker import BrokerError
    from core.ib_broker import IBBroker
    from tasks.runtime import client_id_offset

    settings, journal, switch = _parts()
    if switch.current() is None:
        print("note: trading is not halted, so the strategies may enter again; `tradeflow halt` stops them")
    if not args.yes:
        where = f"{settings.ibkr_host}:{settings.ibkr_port} ({settings.trading_mode})"
        if not sys.stdin.isatty():
            print(f"tradeflow flatten: this cancels every open order and closes every position at {where}; "
                  "give --yes to confirm (no terminal to ask)", file=sys.stderr)
            return 2
        answer = input(f"Cancel every open order and close every position at {where}? Type 'yes': ")
        if answer.strip().lower() != "yes":
            print("not flattened: nothing was sent")
            return 1
    try:
        with IBBroker(client_id=settings.ibkr_client_id + client_id_offset("operator"), settings=settings) as b:
            report = flatten_account(b, journal, switch, who=_who(args), reason=args.reason, at=_now(),
                                     fill_timeout=args.timeout)
    except BrokerError as exc:
        print(f"tradeflow flatten: {exc}", file=sys.stderr)
        return 1
    if not report["cancelled"] and not report["orders"] and not report["errors"]:
        print("nothing to flatten: no open orders, no positions")
    return 1 if report["errors"] else 0
