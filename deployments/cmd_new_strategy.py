"""`tradeflow new-strategy NAME`: write the skeleton of a strategy as a unit the registry finds by itself.

It writes, in the project folder:

    strategies/__init__.py              (once: the package of project-local strategies)
    strategies/<pkg>/__init__.py        STRATEGY: the registry entry (events, entrypoint, client-id offset, tags,
                                        parameters, whether it sends orders); no Prefect
    strategies/<pkg>/rules.py           the pure rule (no Prefect, no broker, no clock): decide(...)
    strategies/<pkg>/flow.py            the Prefect flow, built from the shared runtime (tasks.runtime.flow_run,
                                        the late guard, the journal, the one order path, the artifact)
    tests/test_strategy_<pkg>.py        its test: the rule alone, the registry entry and its schedule, the flow
                                        against the paper exchange, a rerun journaling nothing twice

`<pkg>` is NAME with '-' as '_'. The skeleton's rule is a toy (the last completed 5-minute close against the mean of
the previous ones) and its entry has `sends_orders=False`: it journals its decisions and sends nothing until you
write a real rule and set it. It runs every 30 minutes of each session and takes the next free client-id offset (a multiple of 10).
It does not run until named in TRADEFLOW_STRATEGIES.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

_NAME = re.compile(r"^[a-z][a-z0-9-]*[a-z0-9]$")


def register_new_strategy(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("new-strategy", help="write the skeleton of a new strategy (rules, flow, registry entry, test)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="the strategy's name: lower-case letters, digits and '-' (e.g. demo, gap-fade)")
    p.add_argument("--symbol", default="SMH", help="the symbol the skeleton looks at (default SMH)")
    p.add_argument("--project-dir", type=Path, default=None, help="the project folder (default: this project)")
    p.add_argument("--force", action="store_true", help="overwrite files that exist")
    p.set_defaults(handler=_new_strategy)


def _new_strategy(args: argparse.Namespace) -> int:
    from core.registry import RESERVED_CLIENT_ID_OFFSETS, RegistryError, default_registry
    from core.settings import PROJECT_ROOT

    try:
        registry = default_registry()
        written = write_skeleton(args.name, args.project_dir or PROJECT_ROOT, registry.next_client_id_offset(),
                                 symbol=args.symbol.upper(), force=args.force,
                                 taken=[*registry.names(), *(s.name for s in registry.strategies),
                                        *RESERVED_CLIENT_ID_OFFSETS])
    except (ValueError, RegistryError, FileExistsError) as exc:
        print(f"tradeflow new-strategy: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    pkg = args.name.replace("-", "_")
    print(f"\nnext:\n  uv run pytest -q tests/test_strategy_{pkg}.py\n"
          f"  uv run tradeflow schedule --deployment {args.name} --from YYYY-MM-DD --to YYYY-MM-DD\n"
          f"  add {args.name} to TRADEFLOW_STRATEGIES (.env), then `tradeflow deploy` (and `tradeflow replay`)")
    return 0


def write_skeleton(name: str, project_dir: Path, client_id_offset: int, *, symbol: str = "SMH",
                   force: bool = False, taken: list[str] | tuple[str, ...] = ()) -> list[Path]:
    """Write the skeleton of strategy `name` under `project_dir`; returns the files written.

    Raises:
        ValueError: a malformed name, or one the registry already has (`taken`).
        FileExistsError: a file exists (without `force`), naming it.
    """
    if not _NAME.match(name):
        raise ValueError(f"strategy name {name!r}: lower-case letters, digits and '-', starting with a letter")
    if name in taken:
        raise ValueError(f"the registry already has a strategy or deployment named {name!r}")
    pkg = name.replace("-", "_")
    fields = {"name": name, "pkg": pkg, "offset": client_id_offset, "symbol": symbol}
    files = {
        project_dir / "strategies" / "__init__.py": _PACKAGE,
        project_dir / "strategies" / pkg / "__init__.py": _ENTRY.format(**fields),
        project_dir / "strategies" / pkg / "rules.py": _RULES.format(**fields),
        project_dir / "strategies" / pkg / "flow.py": _FLOW.format(**fields),
        project_dir / "tests" / f"test_strategy_{pkg}.py": _TEST.format(**fields),
    }
    existing = [p for p in files if p.exists() and not (p.name == "__init__.py" and p.parent.name == "strategies")]
    if existing and not force:
        raise FileExistsError(f"{existing[0]} exists (--force overwrites)")
    written = []
    for path, text in files.items():
        if path.parent.name == "strategies" and path.name == "__init__.py" and path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


_PACKAGE = '''"""Project-local strategies: one package each, whose `__init__.py` defines `STRATEGY` (a core.registry.Strategy).
The registry (`core.registry`) finds them by themselves; `tradeflow new-strategy NAME` writes one."""
'''

_ENTRY = '''"""The {name} strategy: its registry entry. No Prefect here (the registry is read by the calendar and the CLI).

Its parts: `rules.py` (the pure decision), `flow.py` (the Prefect flow), `tests/test_strategy_{pkg}.py`.
It runs once named in TRADEFLOW_STRATEGIES (`tradeflow strategies` lists the registry).
"""

from core.registry import DeploymentEntry, Strategy, every

DEPLOYMENT = DeploymentEntry(
    name="{name}",
    strategy="{name}",
    entrypoint="strategies/{pkg}/flow.py:{pkg}",
    description="Every 30 minutes of each session: the {name} rule on {symbol} (journals its decision).",
    events=(every(30),),  # also: at_open(k), before_close(k), at_close(), evening(t), month_end(t), at_time(t)
    client_id_offset={offset},  # IBKR_CLIENT_ID + this: unique among all deployments (IB error 326)
    sends_orders=False,  # True once the rule should trade: the flow then sends its orders (tagged `orders`)
    tags=("{name}",),
    parameters={{}},  # default flow parameters of the deployment, e.g. {{"symbol": "{symbol}"}}
)

STRATEGY = Strategy(
    name="{name}",
    description="Skeleton written by `tradeflow new-strategy {name}`: replace the rule in rules.py.",
    deployments=(DEPLOYMENT,),
    rules="strategies.{pkg}.rules",
)
'''

_RULES = '''"""The {name} rule: a pure function of its inputs (no Prefect, no broker, no clock), testable alone.

The skeleton's rule (a toy; replace it): with the closes of the last completed 5-minute bars (USD), the last
close above the mean of the `lookback` closes before it by more than `band` (a fraction) is a BUY when flat,
below it by more than `band` a SELL when long; anything else HOLD.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Params:
    """`lookback`: bars before the last one (>= 1); `band`: fraction (0.001 = 0.1 %); `quantity`: shares."""

    lookback: int = 6
    band: float = 0.001
    quantity: int = 1


@dataclass(frozen=True)
class Decision:
    """`action` BUY, SELL or HOLD; `reason`; `inputs` (journaled with the decision)."""

    action: str
    reason: str
    inputs: dict[str, Any] = field(default_factory=dict)


def decide(closes: Sequence[float], position: int, params: Params = Params()) -> Decision:
    """The decision on the last close of `closes` (oldest first, USD) for a position of `position` shares.

    Raises:
        ValueError: fewer than lookback + 1 closes, or a close that is NaN or not positive (never decide on it).
    """
    if len(closes) < params.lookback + 1:
        raise ValueError(f"need {{params.lookback + 1}} closes, got {{len(closes)}}")
    window = [float(c) for c in closes[-(params.lookback + 1):]]
    if not all(math.isfinite(c) and c > 0 for c in window):
        raise ValueError(f"bad close among {{window}}")
    last, mean = window[-1], sum(window[:-1]) / params.lookback
    inputs = {{"last": last, "mean": mean, "band": params.band, "position": position}}
    if last > mean * (1 + params.band) and position == 0:
        return Decision("BUY", f"close {{last:.2f}} above the {{params.lookback}}-bar mean {{mean:.2f}}", inputs)
    if last < mean * (1 - params.band) and position > 0:
        return Decision("SELL", f"close {{last:.2f}} below the {{params.lookback}}-bar mean {{mean:.2f}}", inputs)
    return Decision("HOLD", f"close {{last:.2f}}, mean {{mean:.2f}}, position {{position}}: nothing to do", inputs)
'''

_FLOW = '''"""Deployment `{name}` (its events: strategies/{pkg}/__init__.py): the {name} rule on the last completed bars.

1. The late guard: a run that starts more than TRADEFLOW_LATE_RUN_MAX_MINUTES after its `as_of` (broker clock)
   ends SkippedLate and does nothing.
2. Inputs from the broker: the completed 5-minute bars, the position.
3. The decision (rules.decide) and its inputs go to the journal (`signals`, strategy '{name}') before any order.
4. When the entry sends orders and the decision is BUY or SELL: one market order through the one order path
   (kill switch, breaks, journal first), its orderRef made from the decision, so a rerun sends nothing twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow

from core.broker import OrderRequest
from core.orders import order_ref
from strategies.{pkg}.rules import Params, decide
from tasks.runtime import flow_run
from tasks.strategy_kit import completed_bars, entry_of, position_qty, record_decision

DEPLOYMENT = "{name}"
STRATEGY = "{name}"


@flow(name=DEPLOYMENT)
def {pkg}(as_of: datetime | None = None, symbol: str = "{symbol}") -> dict[str, Any] | Any:
    """One run of the {name} rule on `symbol` at `as_of` (aware; default: the run's scheduled start)."""
    with flow_run(DEPLOYMENT, as_of) as run:
        if run.session is None:
            run.outcome = "not a session day: nothing to do"
            return {{"decision": None}}
        with run.broker() as broker:
            late = run.refuse_if_late(broker, run.settings.late_run_max_minutes)
            if late is not None:
                return late
            bars = completed_bars(broker, symbol, run.as_of)
            position = position_qty(broker, symbol)
            decision = decide(list(bars["close"]), position, Params())
            ref = order_ref(STRATEGY, symbol, run.as_of, decision.action.lower())
            sends = entry_of(run).sends_orders and decision.action != "HOLD"
            record_decision(run, STRATEGY, symbol, decision.action, decision.reason, price=decision.inputs["last"],
                            order_ref=ref if sends else None, inputs=decision.inputs)
            if sends:
                run.gateway(broker).submit(
                    OrderRequest(symbol, decision.action, Params().quantity, ref),
                    strategy=STRATEGY, intent="entry" if decision.action == "BUY" else "exit",
                    session=run.session.date, as_of=run.as_of)
        run.outcome = f"{{decision.action}} {{symbol}}: {{decision.reason}}"
        run.publish(f"### {name} {{run.as_of:%Y-%m-%d %H:%M}}\\n\\n**{{decision.action}}** {{symbol}}: "
                    f"{{decision.reason}}\\n", table=[{{"symbol": symbol, "decision": decision.action, **decision.inputs}}])
        return {{"decision": decision.action, "symbol": symbol, **decision.inputs}}
'''

_TEST = '''"""The {name} strategy (written by `tradeflow new-strategy {name}`): the rule alone, its registry entry and schedule,
and its flow as a real Prefect flow run against the paper exchange (real bars), journaling once."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import pytest

from core.calendar import NY, event_times
from core.journal import Journal
from core.registry import load_registry
from core.settings import PROJECT_ROOT, get_settings
from strategies.{pkg}.rules import Params, decide


def test_the_rule_alone():
    assert decide([100.0] * 6 + [101.0], 0).action == "BUY"
    assert decide([100.0] * 6 + [99.0], 5).action == "SELL"
    assert decide([100.0] * 6 + [101.0], 5).action == "HOLD"
    with pytest.raises(ValueError):
        decide([100.0, float("nan")] * 4, 0)
    with pytest.raises(ValueError):
        decide([100.0], 0, Params(lookback=6))


def test_the_rules_import_no_prefect():
    code = "import sys, strategies.{pkg}.rules, strategies.{pkg}; assert 'prefect' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, check=True)


def test_the_registry_has_it_and_its_schedule():
    entry = load_registry().deployment("{name}")
    assert entry.strategy == "{name}" and entry.entrypoint == "strategies/{pkg}/flow.py:{pkg}"
    times = [e.time for e in event_times("2026-03-02", "2026-03-02", deployment="{name}")]
    assert times[0] == dt.datetime(2026, 3, 2, 10, 0, tzinfo=NY) and times[-1] == dt.datetime(2026, 3, 2, 16, 0,
                                                                                                tzinfo=NY)


@pytest.mark.prefect_server
def test_the_flow_decides_on_the_paper_exchange_and_a_rerun_journals_nothing_twice(exchange, prefect_api):
    from strategies.{pkg}.flow import {pkg}

    as_of = dt.datetime(2026, 3, 2, 10, 0, tzinfo=NY)  # the exchange fixture's clock
    first = {pkg}(as_of=as_of, return_state=True)
    assert first.is_completed(), first.message
    again = {pkg}(as_of=as_of, return_state=True)
    assert again.is_completed(), again.message
    journal = Journal(get_settings().journal_path)
    rows = journal.query("SELECT decision, reason FROM signals WHERE strategy = ?", ["{name}"])
    assert len(rows) == 1 and rows["decision"][0] in ("BUY", "SELL", "HOLD")
    events = journal.query("SELECT event FROM flow_events WHERE deployment = ? ORDER BY recorded_at", ["{name}"])
    assert list(events["event"]) == ["started", "completed"] * 2
'''
