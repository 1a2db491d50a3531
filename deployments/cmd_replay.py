"""`tradeflow replay` (the replay itself: deployments/replay.py)."""

from __future__ import annotations

import argparse
import sys


def register_replay(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("replay", help="run past sessions through the flows on the paper exchange's clock",
                       description="Drives the paper exchange's clock through the sessions and runs, at each "
                       "scheduled event, that deployment's flow with the event's as_of, as subflows of one 'replay' "
                       "flow run (see deployments/replay.py). Trains a missing MTF model first.")
    p.add_argument("--from", dest="start", metavar="YYYY-MM-DD", help="first session (inclusive)")
    p.add_argument("--to", dest="end", metavar="YYYY-MM-DD", help="last session (inclusive)")
    p.add_argument("--sessions", type=int, metavar="N", help="the most recent N sessions of the data instead")
    p.add_argument("--mtf-every", type=int, default=1, metavar="K", help="every K-th mtf-signal event (default 1)")
    p.add_argument("--no-train", action="store_true", help="do not train a missing model first")
    p.add_argument("--with-retrain", action="store_true",
                   help="also run retrain after the last session when no month ends in the range (tradeflow up does)")
    p.add_argument("--deployments", nargs="+", metavar="NAME",
                   help="only these deployments (default: those that run; `tradeflow strategies` lists them)")
    p.set_defaults(handler=_replay)


def _replay(args: argparse.Namespace) -> int:
    import datetime as dt
    import time

    from core.settings import get_settings
    from deployments.replay import get_replay_flow, plan_startup_replay, replay_symbols

    settings = get_settings()
    if args.sessions is not None:
        if args.start or args.end:
            print("tradeflow replay: give --sessions or --from/--to, not both", file=sys.stderr)
            return 2
        plan = plan_startup_replay(settings, args.sessions)
        if plan is None:
            print(f"tradeflow replay: no complete session in the 5-minute bars of {', '.join(replay_symbols(settings))}"
                  f" under {settings.data_dir}", file=sys.stderr)
            return 1
        start, end = plan.sessions[0].date, plan.sessions[-1].date
    elif args.start and args.end:
        try:
            start, end = dt.date.fromisoformat(args.start), dt.date.fromisoformat(args.end)
        except ValueError as exc:
            print(f"tradeflow replay: {exc}", file=sys.stderr)
            return 2
    else:
        print("tradeflow replay: give --from and --to, or --sessions N", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    state = get_replay_flow()(start, end, args.mtf_every, None, not args.no_train, args.with_retrain,
                             args.deployments, return_state=True)
    took = time.monotonic() - t0
    print(f"replay {start} .. {end}: {state.name} in {took:.0f} s" + ("" if state.is_completed() else
                                                                       f": {state.message}"))
    return 0 if state.is_completed() else 1
