"""`tradeflow up`: see deployments/up.py."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time


def register_up(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("up", help="start the Prefect server, paper exchange, deployments, alerts and worker",
                       description="Starts what is missing: a local Prefect server (SQLite in the state directory) "
                       "unless PREFECT_API_URL names one, the paper exchange when no TWS is configured, the "
                       "deployments and alerts, a process worker, and a replay of the latest session; prints where "
                       "the UI is; Ctrl+C stops what it started (see deployments/up.py).")
    p.add_argument("--replay-sessions", type=int, default=1, metavar="N",
                   help="with the paper exchange, replay the most recent N sessions of the data on start "
                        "(default 1; 0: none)")
    p.add_argument("--mtf-every", type=int, default=1, metavar="K",
                   help="in that replay, run every K-th mtf-signal event only (default 1: all 78 a session)")
    p.add_argument("--role", choices=("all", "server", "worker", "gateway"), default="all",
                   help="what this host runs when the system spans several (deployments/roles.py; README, 'Running "
                        "on more than one machine'); default all: everything here")
    p.add_argument("--name", default=None, help="--role worker: the worker's name in the UI (default "
                   "tradeflow-HOSTNAME)")
    p.add_argument("--schedules", choices=("on", "off"), default="on",
                   help="--role server: the deployments' schedules (default on; off: runs only when asked)")
    p.set_defaults(handler=_up)


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops like Ctrl+C


def _up(args: argparse.Namespace) -> int:
    from core.settings import get_settings

    settings = get_settings()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    if args.role == "server" or (args.role == "all" and not os.environ.get("PREFECT_API_URL")):
        # the server's password, before Prefect reads its settings
        from deployments.prefect_auth import CLIENT_VARIABLE, AuthFileError, ensure_auth

        try:
            os.environ[CLIENT_VARIABLE] = ensure_auth(settings.prefect_home)
        except AuthFileError as exc:
            print(f"tradeflow up: {exc}", file=sys.stderr)
            return 1
    if args.role == "all":
        return _supervise(settings, "tradeflow up", lambda up: _start_all(up, args))
    return _supervise(settings, f"tradeflow up --role {args.role}", lambda up: _start_role(up, args))


def _supervise(settings, label: str, start) -> int:
    """Run `start(up)` (it starts the parts and returns the replay child or None), then watch until Ctrl+C,
    SIGTERM or a child's death; always stop what was started. Returns the exit status."""
    from deployments.up import Up, UpError

    signal.signal(signal.SIGTERM, _sigterm)
    # a process started in the background by a non-interactive shell (`cmd &`, as CI scripts and test runners
    # start theirs) inherits SIGINT ignored, and Python then raises no KeyboardInterrupt: Ctrl+C / SIGINT must stop
    signal.signal(signal.SIGINT, signal.default_int_handler)
    up = Up(settings)
    code = 0
    try:
        code = up.watch(start(up))
    except KeyboardInterrupt:
        code = 0
    except UpError as exc:
        print(f"tradeflow up: {exc}", file=sys.stderr)
        code = 1
    except Exception as exc:  # noqa: BLE001 - say what failed, stop what was started
        import traceback

        print(f"{label}: failed: {type(exc).__name__}: {exc}\n{traceback.format_exc()}", file=sys.stderr)
        code = 1
    finally:
        up.stop()
    up.say(f"{label}: stopped")
    return code


def _start_role(up, args: argparse.Namespace) -> None:
    """`--role server|worker|gateway` (deployments/roles.py)."""
    from deployments import roles

    if args.role == "server":
        roles.start_server(up, schedules=args.schedules == "on")
    elif args.role == "worker":
        roles.start_worker(up, args.name)
    else:
        roles.start_gateway(up)
    up.say(f"tradeflow up --role {args.role}: running" + (f"; Prefect UI {up.ui_url}" if up.ui_url else "")
           + "; Ctrl+C stops it")
    return None


def _start_all(up, args: argparse.Namespace):
    """Everything on this machine (deployments/up.py); returns the startup replay's child, or None."""
    t0 = time.monotonic()
    plan = None
    if args.replay_sessions:
        from deployments.replay import plan_startup_replay

        plan = plan_startup_replay(up.settings, args.replay_sessions)
    up.start_api()
    up.start_broker(replay_from=plan.clock_start if plan else None)
    up.start_paper_services()
    up.deploy()
    up.start_worker()
    up.say(f"\ntradeflow is up ({time.monotonic() - t0:.0f} s). Prefect UI: {up.ui_url}\n"
           f"  runs {up.ui_url}/runs, deployments {up.ui_url}/deployments, automations {up.ui_url}/automations\n"
           f"  prefect CLI in another shell: export PREFECT_API_URL={up.api_url}"
           + (f' PREFECT_API_AUTH_STRING="$(cat {up.server.auth_path})"' if up.server else "") + "\n"
           + (f"  the UI asks for a password: the content of {up.server.auth_path}\n" if up.server else "") +
           f"  ad hoc run: prefect deployment run 'ema-entry/ema-entry' -p as_of=<ISO time with offset>\n"
           f"  logs in {up.logs}; Ctrl+C stops everything started here\n")
    if not (up.paper and plan is not None):
        return None
    if plan.already_done:
        up.say(f"replay of {plan.describe()}: already in the journal (see the UI); `tradeflow replay` replays other "
               "sessions")
        return None
    replay = up.start_replay(plan.argv(args.mtf_every))
    up.say(f"replaying {plan.describe()} (every flow as a subflow of one 'replay' run; progress in the UI and "
           f"{replay.log_path}) …")
    return replay
