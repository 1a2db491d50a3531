"""The one registry of strategies and their deployments: what runs when, through which flow, with which client id.

Everything that needs the list of deployments reads it here: the calendar's events (`core.calendar`), the
Prefect schedules and `tradeflow deploy` (`deployments.schedules`, `deployments.deploy`), `tradeflow replay`, the
runtime's IB client ids (`tasks.runtime`), the alert automations (they cover what `deploy` applied), the tags,
`tradeflow strategies`. No Prefect here: the registry is plain frozen dataclasses.

An entry (`DeploymentEntry`) says:

- `name` (the deployment and flow name), `strategy` (the strategy it belongs to), `description` (the UI's);
- `events`: when it runs, relative to each NYSE session (America/New_York), any of `at_open(k)` (open + k
  minutes), `every(n)` (every n minutes from open + n to the close inclusive: the ends of n-minute bars),
  `before_close(k)` (k minutes before the close: 15:55, 12:55 on an early close), `at_close()`, `at_time(t)` /
  `evening(t)` (a fixed time on every session day), `month_end(t)` (a fixed time on the month's last session);
- `entrypoint` (`path/to/file.py:function`, relative to the project folder);
- `client_id_offset`: its IB connection uses IBKR_CLIENT_ID + offset, unique across entries (IB error 326);
- `sends_orders` (tagged `orders` in the UI), `tags`, `parameters` (the deployment's default parameters);
- for the replay: `replay_thinned` (`--mtf-every K` keeps every K-th event) and `replay_settle_setting` (a
  setting, in seconds, by which the replay moves the exchange's clock past the event before the run, as
  `ema-update` waits for the day's bar to be final).

Strategies (`Strategy`) group entries. The built-in ones are in `BUILTIN_STRATEGIES`; more come from:

- the project folder: every package `strategies/<name>/` whose `__init__.py` defines `STRATEGY` (a `Strategy`);
  `tradeflow new-strategy NAME` writes one;
- installed packages: entry points of the group `tradeflow.strategies` (`ENTRY_POINT_GROUP`), each naming a
  `Strategy` object (`[project.entry-points."tradeflow.strategies"] mine = "my_pkg.strategy:STRATEGY"`).

Which strategies run: `TRADEFLOW_STRATEGIES` (comma-separated names) when set, else every strategy with
`enabled_by_default` (the built-in `account`, `ema`, `mtf`; a new or added strategy is off until named there).
The `account` strategy (equity snapshot, reconciliation) always runs.
"""

from __future__ import annotations

import datetime as dt
import importlib
import importlib.util
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

ENTRY_POINT_GROUP = "tradeflow.strategies"
"""The entry point group through which an installed package adds strategies."""

PROJECT_STRATEGIES_DIR = "strategies"
"""The folder of the project holding project-local strategies (one package each)."""

ALWAYS_ENABLED = "account"
"""The strategy whose deployments always run (equity snapshot, reconciliation)."""

RESERVED_CLIENT_ID_OFFSETS = {"replay": 70, "operator": 80}
"""Client-id offsets of connections that are not a deployment's: the replay's own, the operator commands'
(halt/flatten/reconcile/resolve)."""

FALLBACK_CLIENT_ID_OFFSET = 90
"""Offset of a connection whose name is in no entry (tests' probes)."""

_NAME = re.compile(r"^[a-z][a-z0-9-]*[a-z0-9]$")


class RegistryError(ValueError):
    """An entry is malformed or conflicts with another (name, client-id offset); the message names both."""


EventKind = Literal["open", "every", "before_close", "close", "time", "month_end"]


@dataclass(frozen=True)
class EventRule:
    """When a deployment runs on a session, relative to the session (America/New_York).

    Attributes:
        kind: 'open' (open + `minutes`), 'every' (every `minutes` from open + `minutes` through the close,
            inclusive), 'before_close' (close - `minutes`), 'close', 'time' (`time` on every session day),
            'month_end' (`time` on the month's last session).
        minutes: minutes (see `kind`).
        time: a wall-clock time, New York ('time', 'month_end').
        setting: a Settings field (minutes) that overrides `minutes` when the caller gives its value (the EMA
            entry's `ema_entry_minutes_before_close`).
    """

    kind: EventKind
    minutes: int = 0
    time: dt.time | None = None
    setting: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("open", "every", "before_close", "close", "time", "month_end"):
            raise RegistryError(f"unknown event kind {self.kind!r}")
        if self.kind in ("time", "month_end") and self.time is None:
            raise RegistryError(f"a {self.kind!r} event needs a time")
        if self.kind == "every" and self.minutes <= 0:
            raise RegistryError(f"an 'every' event needs a positive number of minutes, got {self.minutes}")
        if self.kind == "before_close" and self.minutes <= 0:
            raise RegistryError(f"a 'before_close' event needs positive minutes, got {self.minutes}")

    def times(self, session: Any, is_month_end: bool, values: Mapping[str, int] | None = None) -> list[dt.datetime]:
        """The event's times on `session` (a `core.calendar.Session`), aware, America/New_York.

        Args:
            is_month_end: whether the session is the month's last.
            values: setting name -> minutes, overriding `minutes` for a rule with that `setting`.

        Raises:
            ValueError: an overriding value is not positive.
        """
        minutes = self.minutes
        if self.setting and values and self.setting in values:
            minutes = int(values[self.setting])
            if minutes <= 0:
                raise ValueError(f"{self.setting} must be positive, got {minutes}")
        from core.calendar import NY

        at = lambda t: dt.datetime.combine(session.date, t, tzinfo=NY)  # noqa: E731
        if self.kind == "open":
            return [session.open + dt.timedelta(minutes=minutes)]
        if self.kind == "every":
            return session.bar_ends(dt.timedelta(minutes=minutes))
        if self.kind == "before_close":
            return [session.close - dt.timedelta(minutes=minutes)]
        if self.kind == "close":
            return [session.close]
        if self.kind == "time":
            return [at(self.time)]
        return [at(self.time)] if is_month_end else []

    def describe(self) -> str:
        """A short human description ('every 5 min', 'close - 5 min', '17:00', ...)."""
        m = f"{self.minutes} min"
        return {"open": f"open + {m}" if self.minutes else "open", "every": f"every {m}",
                "before_close": f"close - {m}", "close": "close",
                "time": f"{self.time:%H:%M}" if self.time else "",
                "month_end": f"{self.time:%H:%M} on the month's last session" if self.time else ""}[self.kind]


def at_open(minutes: int = 0) -> EventRule:
    """At the open + `minutes` (09:30 + k)."""
    return EventRule("open", minutes)


def every(minutes: int) -> EventRule:
    """Every `minutes` from open + `minutes` to the close inclusive (the ends of the session's bars)."""
    return EventRule("every", minutes)


def before_close(minutes: int, setting: str | None = None) -> EventRule:
    """`minutes` before the close (15:55 for 5; 12:55 on an early close); `setting` may override the minutes."""
    return EventRule("before_close", minutes, setting=setting)


def at_close() -> EventRule:
    """At the close (16:00; 13:00 on an early close)."""
    return EventRule("close")


def at_time(when: dt.time) -> EventRule:
    """At a fixed New York time on every session day (e.g. 09:00, before the open)."""
    return EventRule("time", time=when)


def evening(when: dt.time = dt.time(17, 0)) -> EventRule:
    """In the evening of every session (17:00 by default)."""
    return EventRule("time", time=when)


def month_end(when: dt.time = dt.time(18, 0)) -> EventRule:
    """At `when` on the month's last session (a month ending on a weekend or holiday: its last session)."""
    return EventRule("month_end", time=when)


@dataclass(frozen=True)
class DeploymentEntry:
    """One deployment of a strategy (see the module docstring for each field)."""

    name: str
    strategy: str
    entrypoint: str
    description: str
    events: tuple[EventRule, ...]
    client_id_offset: int
    sends_orders: bool = False
    tags: tuple[str, ...] = ()
    parameters: Mapping[str, Any] = field(default_factory=dict, hash=False)
    replay_thinned: bool = False
    replay_settle_setting: str | None = None

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise RegistryError(f"deployment name {self.name!r}: lower-case letters, digits and '-', starting with "
                                "a letter")
        path, sep, fn = self.entrypoint.partition(":")
        if not sep or not path.endswith(".py") or not fn.isidentifier():
            raise RegistryError(f"{self.name}: entrypoint {self.entrypoint!r} is not 'path/to/file.py:function'")
        if not self.events:
            raise RegistryError(f"{self.name}: no events (when does it run?)")
        if not isinstance(self.client_id_offset, int) or self.client_id_offset < 0:
            raise RegistryError(f"{self.name}: client_id_offset must be a non-negative int, got "
                                f"{self.client_id_offset!r}")

    @property
    def all_tags(self) -> tuple[str, ...]:
        """The UI tags: 'tradeflow', 'orders' when it sends orders, then its own."""
        return ("tradeflow", *(("orders",) if self.sends_orders else ()), *self.tags)

    def times(self, session: Any, is_month_end: bool, values: Mapping[str, int] | None = None) -> list[dt.datetime]:
        """Every time it runs on `session` (sorted, unique)."""
        return sorted({t for rule in self.events for t in rule.times(session, is_month_end, values)})


@dataclass(frozen=True)
class Strategy:
    """A strategy: its name (the journal's `strategy`), a description, its deployments, and whether it runs
    without being named in TRADEFLOW_STRATEGIES. `rules` names its pure module (no Prefect), `source` where the
    entry came from ('builtin', the project package, or the entry point). `paper_services`: (name, python
    arguments) of processes `tradeflow up` starts beside the paper exchange when the strategy runs (a local data
    source for demos, e.g. ("signal source", ("-m", "strategies.signals.source")))."""

    name: str
    description: str
    deployments: tuple[DeploymentEntry, ...]
    enabled_by_default: bool = False
    rules: str | None = None
    source: str = "builtin"
    paper_services: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __post_init__(self) -> None:
        if not _NAME.match(self.name) and not re.match(r"^[a-z]$", self.name):
            raise RegistryError(f"strategy name {self.name!r}: lower-case letters, digits and '-'")
        for d in self.deployments:
            if d.strategy != self.name:
                raise RegistryError(f"deployment {d.name} says strategy {d.strategy!r}, listed under {self.name!r}")


# --- the built-in strategies -----------------------------------------------------------------------------------

_PREFLIGHT = DeploymentEntry(
    name="preflight", strategy="account", entrypoint="flows/preflight.py:preflight",
    description="09:00 New York every session: the pre-open checklist (connection, account, market data, buying "
                "power, MTF champions, kill switch, breaks, disk, schedule window); red fails the run.",
    events=(at_time(dt.time(9, 0)),), client_id_offset=5)
_EQUITY_SNAPSHOT = DeploymentEntry(
    name="equity-snapshot", strategy="account", entrypoint="flows/equity_snapshot.py:equity_snapshot",
    description="At the open (09:30 New York): day-start equity (NetLiquidation) and positions; arms the day's "
                "equity stop.",
    events=(at_open(),), client_id_offset=10)
_MTF_SIGNAL = DeploymentEntry(
    name="mtf-signal", strategy="mtf", entrypoint="flows/mtf_signal.py:mtf_signal",
    description="Every 5 minutes from 09:35 to the close: MTF LSTM signals for the MTF symbols; enter, hold, exit; "
                "risk checks; the EMA daily stop's second line.",
    events=(every(5),), client_id_offset=20, sends_orders=True, replay_thinned=True)
_EMA_ENTRY = DeploymentEntry(
    name="ema-entry", strategy="ema", entrypoint="flows/ema_entry.py:ema_entry",
    description="5 minutes before the close (15:55; 12:55 on early closes): the EMA 25/125 decision on SMH, "
                "leverage by VIX.",
    events=(before_close(5, setting="ema_entry_minutes_before_close"),), client_id_offset=30, sends_orders=True)
_EMA_UPDATE = DeploymentEntry(
    name="ema-update", strategy="ema", entrypoint="flows/ema_update.py:ema_update",
    description="At the close (16:00; 13:00 on early closes): fold the official close into the EMAs.",
    events=(at_close(),), client_id_offset=40, replay_settle_setting="ema_close_settle_seconds")
_RECONCILIATION = DeploymentEntry(
    name="reconciliation", strategy="account", entrypoint="flows/reconciliation.py:reconciliation",
    description="17:00 every session: broker positions, orders and executions against the journal; breaks; "
                "daily P&L.",
    # 17:00: an hour after the regular close (four after an early close), so the day's fills and commission
    # reports have settled, and hours before IB's nightly reset and midnight, after which reqExecutions no longer
    # returns the day's executions (DESIGN.md)
    events=(evening(dt.time(17, 0)),), client_id_offset=50)
_RETRAIN = DeploymentEntry(
    name="retrain", strategy="mtf", entrypoint="flows/retrain.py:retrain",
    description="18:00 on the last session of the month: train a challenger MTF model, promote it only if better.",
    events=(month_end(dt.time(18, 0)),), client_id_offset=60)

BUILTIN_DEPLOYMENTS: tuple[DeploymentEntry, ...] = (
    _PREFLIGHT, _EQUITY_SNAPSHOT, _MTF_SIGNAL, _EMA_ENTRY, _EMA_UPDATE, _RECONCILIATION, _RETRAIN)
"""The built-in deployments, in the order of a session (the order of prefect.yaml and `tradeflow deploy`)."""

BUILTIN_STRATEGIES: tuple[Strategy, ...] = (
    Strategy("account", "The account's day: the pre-open check, day-start equity and positions, the evening reconciliation.",
             (_PREFLIGHT, _EQUITY_SNAPSHOT, _RECONCILIATION), enabled_by_default=True),
    Strategy("mtf", "Multi-timeframe LSTM on the MTF symbols (strategies.md), with its monthly retrain.",
             (_MTF_SIGNAL, _RETRAIN), enabled_by_default=True, rules="core.strategies.mtf"),
    Strategy("ema", "EMA 25/125 on SMH with VIX-scaled leverage and the daily equity stop (strategies.md).",
             (_EMA_ENTRY, _EMA_UPDATE), enabled_by_default=True, rules="core.strategies.ema"),
)


# --- the registry ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Registry:
    """Every known strategy and deployment, checked for conflicts (names, client-id offsets).

    Raises (at construction):
        RegistryError: two deployments or strategies share a name, or two connections share a client-id offset.
    """

    strategies: tuple[Strategy, ...]

    def __post_init__(self) -> None:
        seen_s: set[str] = set()
        names: dict[str, str] = {}
        offsets: dict[int, str] = {v: k for k, v in RESERVED_CLIENT_ID_OFFSETS.items()}
        offsets[FALLBACK_CLIENT_ID_OFFSET] = "(fallback)"
        for s in self.strategies:
            if s.name in seen_s:
                raise RegistryError(f"two strategies are named {s.name!r} (one from {s.source})")
            seen_s.add(s.name)
            for d in s.deployments:
                if d.name in names or d.name in RESERVED_CLIENT_ID_OFFSETS:
                    raise RegistryError(f"deployment {d.name!r} of {s.name} ({s.source}) is also "
                                        f"{names.get(d.name, 'reserved')}")
                names[d.name] = f"a deployment of {s.name}"
                if d.client_id_offset in offsets:
                    raise RegistryError(f"deployment {d.name} ({s.source}): client-id offset {d.client_id_offset} "
                                        f"is already {offsets[d.client_id_offset]}'s")
                offsets[d.client_id_offset] = d.name

    def deployments(self, strategies: Iterable[str] | None = None) -> tuple[DeploymentEntry, ...]:
        """The deployments of `strategies` (default: all), built-in ones first in the order of a session, then
        the others in the order their strategies were found."""
        wanted = None if strategies is None else set(strategies)
        chosen = [d for s in self.strategies if wanted is None or s.name in wanted for d in s.deployments]
        builtin = {d.name: i for i, d in enumerate(BUILTIN_DEPLOYMENTS)}
        return tuple(sorted(chosen, key=lambda d: builtin.get(d.name, len(builtin))))

    def names(self, strategies: Iterable[str] | None = None) -> tuple[str, ...]:
        """The names of `deployments(strategies)`."""
        return tuple(d.name for d in self.deployments(strategies))

    def deployment(self, name: str) -> DeploymentEntry:
        """The entry named `name`.

        Raises:
            ValueError: no such deployment (the message lists the known ones).
        """
        for d in self.deployments():
            if d.name == name:
                return d
        raise ValueError(f"unknown deployment {name!r}; known: {', '.join(self.names())}")

    def strategy(self, name: str) -> Strategy:
        """The strategy named `name`. Raises ValueError listing the known ones."""
        for s in self.strategies:
            if s.name == name:
                return s
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(s.name for s in self.strategies)}")

    def enabled(self, chosen: Sequence[str] | None = None) -> tuple[str, ...]:
        """The strategies that run: `chosen` (TRADEFLOW_STRATEGIES) plus `account`, else every strategy enabled
        by default.

        Raises:
            ValueError: `chosen` names an unknown strategy.
        """
        if chosen is None:
            return tuple(s.name for s in self.strategies if s.enabled_by_default or s.name == ALWAYS_ENABLED)
        for name in chosen:
            self.strategy(name)
        return tuple(s.name for s in self.strategies if s.name in set(chosen) or s.name == ALWAYS_ENABLED)

    def client_id_offset(self, connection: str) -> int:
        """The client-id offset of a deployment or reserved connection (`replay`, `operator`), else
        `FALLBACK_CLIENT_ID_OFFSET`."""
        if connection in RESERVED_CLIENT_ID_OFFSETS:
            return RESERVED_CLIENT_ID_OFFSETS[connection]
        for d in self.deployments():
            if d.name == connection:
                return d.client_id_offset
        return FALLBACK_CLIENT_ID_OFFSET

    def next_client_id_offset(self) -> int:
        """The first multiple of 10 above every offset in use (for a new strategy's deployment)."""
        used = [d.client_id_offset for d in self.deployments()] + [*RESERVED_CLIENT_ID_OFFSETS.values(),
                                                                  FALLBACK_CLIENT_ID_OFFSET]
        return (max(used) // 10 + 1) * 10


def _project_strategies(project_dir: Path) -> list[Strategy]:
    """`STRATEGY` of every `strategies/<name>/__init__.py` of the project, imported as `strategies.<name>`.

    Raises:
        RegistryError: a package has no STRATEGY, or not a Strategy.
    """
    root = project_dir / PROJECT_STRATEGIES_DIR
    found = []
    if not root.is_dir():
        return found
    for init in sorted(root.glob("*/__init__.py")):
        module_name = f"{PROJECT_STRATEGIES_DIR}.{init.parent.name}"
        module = importlib.import_module(module_name)
        if Path(module.__file__).resolve() != init.resolve():
            spec = importlib.util.spec_from_file_location(module_name, init)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        strategy = getattr(module, "STRATEGY", None)
        if not isinstance(strategy, Strategy):
            raise RegistryError(f"{init}: defines no STRATEGY (a core.registry.Strategy)")
        found.append(_with_source(strategy, f"project {PROJECT_STRATEGIES_DIR}/{init.parent.name}"))
    return found


def _entry_point_strategies() -> list[Strategy]:
    """The `Strategy` objects named by the `tradeflow.strategies` entry points of installed packages.

    Raises:
        RegistryError: an entry point does not load or is not a Strategy (naming it and its package).
    """
    from importlib.metadata import entry_points

    found = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        where = f"entry point {ep.name} = {ep.value} ({ep.dist.name if ep.dist else 'unknown package'})"
        try:
            strategy = ep.load()
        except Exception as exc:  # noqa: BLE001 - say which package is broken
            raise RegistryError(f"{where}: {type(exc).__name__}: {exc}") from exc
        if not isinstance(strategy, Strategy):
            raise RegistryError(f"{where}: is a {type(strategy).__name__}, not a core.registry.Strategy")
        found.append(_with_source(strategy, where))
    return found


def _with_source(strategy: Strategy, source: str) -> Strategy:
    from dataclasses import replace

    return replace(strategy, source=source)


def load_registry(project_dir: Path | None = None, entry_points: bool = True) -> Registry:
    """The registry: the built-in strategies, the project's `strategies/*` packages, then the entry points.

    Raises:
        RegistryError: see `Registry`, `_project_strategies`, `_entry_point_strategies`.
    """
    from core.settings import PROJECT_ROOT

    project = _project_strategies(project_dir or PROJECT_ROOT)
    plugins = _entry_point_strategies() if entry_points else []
    return Registry((*BUILTIN_STRATEGIES, *project, *plugins))


@lru_cache(maxsize=1)
def default_registry() -> Registry:
    """`load_registry()` of this project, computed once per process."""
    return load_registry()


def enabled_deployments(settings: Any = None, registry: Registry | None = None) -> tuple[DeploymentEntry, ...]:
    """The deployments that run with `settings` (default: `get_settings()`): those of `Registry.enabled`."""
    from core.settings import get_settings

    registry = registry or default_registry()
    settings = settings or get_settings()
    return registry.deployments(registry.enabled(settings.strategies))


def enabled_names(settings: Any = None, registry: Registry | None = None) -> tuple[str, ...]:
    """The names of `enabled_deployments`."""
    return tuple(d.name for d in enabled_deployments(settings, registry))
