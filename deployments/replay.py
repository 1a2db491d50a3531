"""`tradeflow replay`: run past sessions through the real flows, on the paper exchange's clock.

One Prefect flow run, `replay`, walks the sessions from `--from` to `--to` (or the most recent `--sessions N` of
the data) and, for every scheduled event of each session of the deployments that run (the registry,
`core.registry`; `--deployments` for some of them; `core.calendar.session_events`: the equity snapshot at the
open, mtf-signal every 5 minutes, ema-entry before the close, ema-update at the close, reconciliation, retrain on
the month's last session, and any added strategy's), in time order:

1. moves the paper exchange's clock to the event's time (admin `set_clock`: orders due by then fill first); for
   an entry with a `replay_settle_setting` (`ema-update`), that many seconds later: the time the day's bar counts
   as final (`TRADEFLOW_EMA_CLOSE_SETTLE_SECONDS` after the close, which a live run waits for on the broker's
   clock);
2. calls the deployment's flow function, imported by its registry entrypoint, with
   `as_of` = the event's time, as a subflow: each run shows in the UI under the replay run, writes its
   artifact, and journals like a scheduled run (lateness is measured on the exchange's clock, so it is on time).

A subflow that fails is counted and the walk goes on; the replay ends Failed when any did, naming them. Before
the walk, when the model registry has no champion for an MTF symbol, it trains one on the hourly bars that end
before the first replayed session (no look-ahead), as `tradeflow train` does.

The exchange's clock never goes back: a replay must start after the clock (a fresh account state, e.g. a new
state directory, replays anything). `--mtf-every K` runs only every K-th event of a session of the entries marked
`replay_thinned` (mtf-signal: the 09:35 one first), for a quicker look; by default all of them run, as the
schedule does.
"""

from __future__ import annotations

import datetime as dt
import importlib
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.calendar import NY, Event, Session, session_events, sessions
from core.settings import PROJECT_ROOT, Settings

REPLAY = "replay"


class ReplayError(RuntimeError):
    """The replay cannot run, or some of its runs failed; the message says which and what to do."""


# --- which sessions ---------------------------------------------------------------------------------------------

def data_sessions(data_dir: Path, symbols: list[str]) -> list[Session]:
    """The NYSE sessions for which every symbol's 5-minute file holds the session's full set of bars (78, or 42
    on an early close), in date order.

    Raises:
        core.bars.BarsError: a file is missing or malformed (naming it).
    """
    import pandas as pd

    from core.bars import bars_path, read_bars_csv

    per_symbol = []
    for symbol in symbols:
        bars = read_bars_csv(bars_path(data_dir, "5m", symbol))
        per_symbol.append(bars.groupby(bars.index.date).size())
    counts = pd.concat(per_symbol, axis=1).dropna().min(axis=1) if per_symbol else pd.Series(dtype=float)
    if counts.empty:
        return []
    days = sessions(min(counts.index), max(counts.index))
    return [s for s in days if counts.get(s.date, 0) == len(s.bar_ends())]


def replay_symbols(settings: Settings) -> list[str]:
    """The symbols whose 5-minute bars a replayed session needs: the MTF symbols and the EMA symbol."""
    return sorted({*(s.upper() for s in settings.mtf_symbols), settings.ema_symbol.upper()})


@dataclass(frozen=True)
class ReplayPlan:
    """The sessions `tradeflow up` replays on start, and whether the journal shows it replayed them before."""

    sessions: tuple[Session, ...]
    already_done: bool

    @property
    def clock_start(self) -> dt.datetime:
        """Where a fresh paper exchange's clock starts: 5 minutes before the first session's open."""
        return self.sessions[0].open - dt.timedelta(minutes=5)

    def describe(self) -> str:
        first, last = self.sessions[0].date, self.sessions[-1].date
        return f"{first}" if first == last else f"{first} .. {last} ({len(self.sessions)} sessions)"

    def argv(self, mtf_every: int = 1) -> list[str]:
        return ["--from", self.sessions[0].date.isoformat(), "--to", self.sessions[-1].date.isoformat(),
                "--mtf-every", str(mtf_every), "--with-retrain"]


def replays_journaled(journal_path: Path) -> list[tuple[str, str]]:
    """(from, to) of every replay the journal saw end (completed, or failed: e.g. stopped half way)."""
    from core.journal import Journal

    if not journal_path.exists():
        return []
    with Journal(journal_path).transaction() as tx:
        return [(d.get("from"), d.get("to")) for d in tx.flow_event_details(REPLAY)]


def plan_startup_replay(settings: Settings, n: int) -> ReplayPlan | None:
    """The most recent `n` sessions of the data (None when the data has none), and whether they were replayed.

    Raises:
        ValueError: `n` < 1.
    """
    if n < 1:
        raise ValueError(f"the number of sessions must be at least 1, got {n}")
    try:
        found = data_sessions(settings.data_dir, replay_symbols(settings))
    except (OSError, ValueError):
        return None
    if not found:
        return None
    chosen = tuple(found[-n:])
    span = (chosen[0].date.isoformat(), chosen[-1].date.isoformat())
    return ReplayPlan(chosen, span in replays_journaled(settings.journal_path))


# --- the flows ---------------------------------------------------------------------------------------------------

def load_flow(deployment: str, entrypoint: str, project_dir: Path = PROJECT_ROOT) -> Any:
    """The flow object of `entrypoint` (`path/to/module.py:function`, relative to the project), imported as the
    module `path.to.module` (the flows are a package of the project).

    Raises:
        ReplayError: the file or the function is missing (naming the deployment and the entrypoint).
    """
    path, _, name = entrypoint.partition(":")
    if not (project_dir / path).is_file():
        raise ReplayError(f"flow {deployment} is missing: {path} does not exist (entrypoint {entrypoint})")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    fn = getattr(module, name, None)
    if fn is None:
        raise ReplayError(f"flow {deployment}: {path} has no {name} (entrypoint {entrypoint})")
    return fn


def _events(session: Session, settings: Settings, mtf_every: int, names: tuple[str, ...]) -> list[Any]:
    from core.registry import default_registry

    registry = default_registry()
    events = session_events(session, settings.ema_entry_minutes_before_close, deployments=names)
    out, index = [], Counter()
    for e in events:
        if registry.deployment(e.deployment).replay_thinned:
            keep = index[e.deployment] % mtf_every == 0
            index[e.deployment] += 1
            if not keep:
                continue
        out.append(e)
    # an entry that moves the clock past its own time (see replay_sessions) runs after what shares its time
    return sorted(out, key=lambda e: (e.time, registry.deployment(e.deployment).replay_settle_setting is not None))


def ensure_models(settings: Settings, before: dt.datetime, out=sys.stdout) -> list[str]:
    """Train and register a champion for each MTF symbol that has none, on hourly bars that end before
    `before` (as `tradeflow train` does); returns the symbols trained."""
    from core.journal import Journal
    from models.registry import ModelRegistry

    registry = ModelRegistry(settings.models_dir, Journal(settings.journal_path))
    missing = [s.upper() for s in settings.mtf_symbols if registry.champion(s) is None]
    if not missing:
        return []
    from core.bars import load_hourly_bars
    from models.evaluate import RuleParams
    from models.mtf import TrainConfig
    from models.pipeline import train_and_register

    cfg = TrainConfig(lookback=settings.mtf_lookback, horizon=settings.mtf_horizon)
    for symbol in missing:
        bars = load_hourly_bars(settings.data_dir, symbol)
        bars = bars[bars.index < before]
        print(f"training the MTF model of {symbol} on {len(bars)} hourly bars before {before:%Y-%m-%d} "
              "(the registry has no champion)", file=out, flush=True)
        outcome = train_and_register(symbol, bars, registry, before, cfg, RuleParams.from_settings(settings))
        print(f"  {symbol} {outcome.version.version} registered, champion: {outcome.became_champion}", file=out,
              flush=True)
    return missing


def replay_sessions(start: dt.date, end: dt.date, mtf_every: int = 1, entrypoints: dict[str, str] | None = None,
                    train: bool = True, with_retrain: bool = False,
                    deployments: list[str] | None = None) -> dict[str, Any]:
    """The body of the `replay` flow (see the module docstring); returns counts per deployment and outcome.
    `with_retrain`: when no month ends inside the range, run each month-end deployment (`retrain`) once after
    the last session anyway (at its time, 18:00), so that a short replay (`tradeflow up`'s) shows every flow.
    `deployments`: only these (default: the deployments that run, `core.registry.enabled_names`); `train`
    applies only when mtf-signal is among them.

    Raises:
        ReplayError: no session in the range, a missing flow, the exchange unreachable or its clock past the
            start, or some runs failed (after all ran).
    """
    from prefect.artifacts import create_markdown_artifact

    from core.paper_exchange import AdminClient
    from core.registry import default_registry, enabled_names
    from core.settings import get_settings
    from tasks.runtime import LATE_STATE_NAME, flow_run

    settings = get_settings()
    if mtf_every < 1:
        raise ReplayError(f"mtf_every must be at least 1, got {mtf_every}")
    days = sessions(start, end)
    if not days:
        raise ReplayError(f"no NYSE session from {start} to {end}")
    registry = default_registry()
    try:
        names = tuple(deployments) if deployments else enabled_names(settings)
        entries = {name: registry.deployment(name) for name in names}
    except ValueError as exc:
        raise ReplayError(str(exc)) from None
    eps = {**{name: e.entrypoint for name, e in entries.items()}, **(entrypoints or {})}
    missing = []
    flows = {}
    for name in names:
        try:
            flows[name] = load_flow(name, eps[name])
        except ReplayError as exc:
            missing.append(str(exc))
    if missing:
        raise ReplayError("; ".join(missing))
    admin = AdminClient(settings.paper_admin_port)
    try:
        clock = dt.datetime.fromisoformat(admin.status()["clock"])
    except OSError as exc:
        raise ReplayError(f"no paper exchange answers on its admin port 127.0.0.1:{settings.paper_admin_port} "
                          f"({exc}); start one (`tradeflow up` or `tradeflow paper-exchange`)") from None
    first = _events(days[0], settings, mtf_every, names)[0].time
    if clock > first:
        raise ReplayError(f"the paper exchange's clock is at {clock.isoformat()}, after the replay's first event "
                          f"{first.isoformat()}; it never goes back: replay later sessions, or start a fresh "
                          "account state (another TRADEFLOW_STATE_DIR)")
    tally: Counter[tuple[str, str]] = Counter()
    failures: list[str] = []
    with flow_run(REPLAY, first) as run:
        # journaled with the replay's end (completed or failed): `tradeflow up` reads the range from there
        run.details = {"from": days[0].date.isoformat(), "to": days[-1].date.isoformat(), "mtf_every": mtf_every}
        if train and any(e.strategy == "mtf" for e in entries.values()):  # its models, before the walk
            run.details["trained"] = ensure_models(settings, days[0].open)
        month_end_rules = {name: rule for name, e in entries.items() for rule in e.events if rule.kind == "month_end"}
        for day in days:
            events = _events(day, settings, mtf_every, names)
            for name, rule in month_end_rules.items() if with_retrain and day == days[-1] else ():
                if not any(e.deployment == name for d in days for e in _events(d, settings, mtf_every, names)):
                    at = dt.datetime.combine(day.date, rule.time, NY)  # its time on a month's last session
                    events.append(Event(max(at, max(e.time for e in events) + dt.timedelta(minutes=1)), name))
            for event in events:
                at = event.time
                settle = entries[event.deployment].replay_settle_setting
                if settle:
                    # the exchange's clock stands still between events; ema-update waits on it until the day's
                    # bar is final (TRADEFLOW_EMA_CLOSE_SETTLE_SECONDS after the close), so move it there
                    at += dt.timedelta(seconds=float(getattr(settings, settle)))
                admin.set_clock(at)
                fn = flows[event.deployment].with_options(
                    flow_run_name=f"{event.deployment} {event.time.astimezone(NY):%Y-%m-%d %H:%M}")
                state = fn(as_of=event.time, return_state=True)
                outcome = ("skipped" if state.name == LATE_STATE_NAME or state.is_cancelled() else
                           "completed" if state.is_completed() else "failed")
                tally[(event.deployment, outcome)] += 1
                if outcome == "failed":
                    failures.append(f"{event.deployment} {event.time.isoformat()}: {state.message}")
                print(f"{event.time.astimezone(NY):%Y-%m-%d %H:%M} {event.deployment:<16} {state.name}", flush=True)
        rows = [{"deployment": d, **{o: tally[(d, o)] for o in ("completed", "skipped", "failed")}}
                for d in names]
        table = "\n".join(f"| {r['deployment']} | {r['completed']} | {r['skipped']} | {r['failed']} |" for r in rows)
        summary = (f"### replay {days[0].date} .. {days[-1].date}\n\n{len(days)} session(s), every "
                   f"{'' if mtf_every == 1 else f'{mtf_every}th '}mtf-signal event\n\n"
                   f"| deployment | completed | skipped | failed |\n|---|---|---|---|\n{table}\n"
                   + ("\n**Failed:**\n\n" + "\n".join(f"- {f}" for f in failures[:20]) if failures else ""))
        create_markdown_artifact(markdown=summary, key="replay", description=f"replay {days[0].date}..{days[-1].date}")
        run.outcome = f"{sum(tally.values())} runs, {len(failures)} failed"
        if failures:
            raise ReplayError(f"{len(failures)} of {sum(tally.values())} runs failed; first: {failures[0]}")
    return {f"{d} {o}": n for (d, o), n in sorted(tally.items())}


def _replay_flow():
    from prefect import flow

    @flow(name=REPLAY, flow_run_name="replay {start} .. {end}", description="Replays past sessions on the paper exchange's clock: every scheduled event as "
                                   "a subflow with its as_of.")
    def replay(start: dt.date, end: dt.date, mtf_every: int = 1, entrypoints: dict[str, str] | None = None,
               train: bool = True, with_retrain: bool = False,
               deployments: list[str] | None = None) -> dict[str, Any]:
        return replay_sessions(start, end, mtf_every, entrypoints, train, with_retrain, deployments)

    return replay


replay_flow = None
"""The `replay` Prefect flow (created on first use, so that importing this module does not import Prefect)."""


def get_replay_flow():
    global replay_flow
    if replay_flow is None:
        replay_flow = _replay_flow()
    return replay_flow
