"""The registry of strategies and deployments (core.registry) and `tradeflow new-strategy`: the built-in entries
are today's six deployments unchanged; conflicts are refused; project packages and installed packages' entry points
add strategies; TRADEFLOW_STRATEGIES picks what runs; a new strategy's skeleton schedules, deploys, replays and
passes its own generated test in a copy of the project."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core.calendar import NY
from core.registry import (BUILTIN_DEPLOYMENTS, DeploymentEntry, Registry, RegistryError, Strategy, at_open,
                           default_registry, enabled_names, every, load_registry)
from core.settings import PROJECT_ROOT, get_settings, load_settings
from tests.data import require_bars

BUILTIN = ("preflight", "equity-snapshot", "mtf-signal", "ema-entry", "ema-update", "reconciliation", "retrain")


def test_the_builtin_entries_are_the_seven_deployments_with_their_client_ids():
    assert tuple(d.name for d in BUILTIN_DEPLOYMENTS) == BUILTIN
    registry = default_registry()
    assert {n: registry.client_id_offset(n) for n in (*BUILTIN, "replay", "operator", "a-probe")} == {
        "preflight": 5, "equity-snapshot": 10, "mtf-signal": 20, "ema-entry": 30, "ema-update": 40, "reconciliation": 50,
        "retrain": 60, "replay": 70, "operator": 80, "a-probe": 90}
    assert {d.name for d in BUILTIN_DEPLOYMENTS if d.sends_orders} == {"mtf-signal", "ema-entry"}
    assert enabled_names(load_settings()) == BUILTIN  # nothing else runs unless named


def test_conflicting_entries_are_refused_naming_both():
    mine = DeploymentEntry("mine", "mine", "strategies/mine/flow.py:mine", "x", (at_open(),), client_id_offset=30)
    with pytest.raises(RegistryError, match="offset 30 is already ema-entry's"):
        Registry((*default_registry().strategies[:3], Strategy("mine", "x", (mine,))))
    clash = DeploymentEntry("ema-entry", "mine", "strategies/mine/flow.py:mine", "x", (at_open(),), 130)
    with pytest.raises(RegistryError, match="deployment 'ema-entry' of mine"):
        Registry((*default_registry().strategies[:3], Strategy("mine", "x", (clash,))))
    with pytest.raises(RegistryError, match="entrypoint"):
        DeploymentEntry("bad", "bad", "flows/bad:bad", "x", (at_open(),), 140)
    with pytest.raises(RegistryError, match="every"):
        every(0)


def test_strategies_setting_picks_what_runs_and_names_an_unknown_one(monkeypatch):
    monkeypatch.setenv("TRADEFLOW_STRATEGIES", "ema")
    assert enabled_names(load_settings()) == ("equity-snapshot", "ema-entry", "ema-update", "reconciliation")
    monkeypatch.setenv("TRADEFLOW_STRATEGIES", '["mtf", "ema"]')
    assert enabled_names(load_settings()) == BUILTIN
    monkeypatch.setenv("TRADEFLOW_STRATEGIES", "ema,nope")
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        enabled_names(load_settings())


def test_an_installed_package_adds_a_strategy_through_its_entry_point(tmp_path, monkeypatch):
    pkg = tmp_path / "site"
    (pkg / "acme_strategy").mkdir(parents=True)
    (pkg / "acme_strategy" / "__init__.py").write_text(textwrap.dedent("""
        import datetime as dt
        from core.registry import DeploymentEntry, Strategy, before_close, evening
        STRATEGY = Strategy("acme", "a strategy from a package", (DeploymentEntry(
            "acme-close", "acme", "acme_flows/close.py:close", "before the close", (before_close(15),
            evening(dt.time(19, 30))), client_id_offset=210, sends_orders=True, tags=("acme",)),))
    """))
    dist = pkg / "acme_strategy-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-strategy\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[tradeflow.strategies]\nacme = acme_strategy:STRATEGY\n")
    monkeypatch.syspath_prepend(str(pkg))
    registry = load_registry()
    entry = registry.deployment("acme-close")
    assert "entry point acme" in registry.strategy("acme").source and entry.all_tags == ("tradeflow", "orders",
                                                                                         "acme")
    day = dt.date(2026, 11, 27)  # an early close: 13:00
    session = __import__("core.calendar", fromlist=["session_on"]).session_on(day)
    assert entry.times(session, False) == [dt.datetime(2026, 11, 27, 12, 45, tzinfo=NY),
                                           dt.datetime(2026, 11, 27, 19, 30, tzinfo=NY)]
    assert "acme" not in registry.enabled(None)  # off until named in TRADEFLOW_STRATEGIES


# --- new-strategy, in a copy of the project ---------------------------------------------------------------------

def _copy_project(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=PROJECT_ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    for rel in files:
        src = PROJECT_ROOT / rel
        if rel.startswith("state/") or not src.is_file():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(src.read_bytes())
    return dest


def _tradeflow(project: Path, *args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deployments.cli", *args], cwd=project, env=env, text=True,
                          capture_output=True, timeout=timeout)


@pytest.fixture
def project_copy(tmp_path, state_dir):
    project = _copy_project(tmp_path / "project")
    env = {**os.environ, "PYTHONPATH": str(project), "TRADEFLOW_STATE_DIR": str(state_dir),
           "TRADEFLOW_DATA_DIR": str(get_settings().data_dir)}
    return project, env


def test_new_strategy_writes_a_skeleton_that_schedules_and_passes_its_test(project_copy):
    project, env = project_copy
    made = _tradeflow(project, "new-strategy", "demo", env=env)
    assert made.returncode == 0, made.stderr
    assert (project / "strategies/demo/rules.py").is_file() and (project / "tests/test_strategy_demo.py").is_file()
    again = _tradeflow(project, "new-strategy", "demo", env=env)
    assert again.returncode == 2 and "already has a strategy or deployment named 'demo'" in again.stderr
    taken = _tradeflow(project, "new-strategy", "ema", env=env)
    assert taken.returncode == 2 and "'ema'" in taken.stderr

    sched = _tradeflow(project, "schedule", "--deployment", "demo", "--from", "2026-11-27", "--to", "2026-11-30",
                       env=env)
    assert sched.returncode == 0, sched.stderr
    lines = sched.stdout.splitlines()
    assert lines[0] == "demo 2026-11-27T10:00:00-05:00" and "demo 2026-11-27T13:00:00-05:00" in lines
    assert len(lines) == 7 + 13  # the early close: 10:00 .. 13:00; a full session: 10:00 .. 16:00
    default = _tradeflow(project, "schedule", "--from", "2026-11-30", "--to", "2026-11-30", env=env)
    assert "demo" not in default.stdout  # not run until named in TRADEFLOW_STRATEGIES
    on = _tradeflow(project, "schedule", "--from", "2026-11-30", "--to", "2026-11-30",
                    env={**env, "TRADEFLOW_STRATEGIES": "ema,mtf,demo"})
    assert sum(line.startswith("demo ") for line in on.stdout.splitlines()) == 13

    listed = _tradeflow(project, "strategies", env=env)
    assert "demo (off; project strategies/demo)" in listed.stdout and "client id 121" in listed.stdout

    # its generated test, in the copy (the flow against the paper exchange needs a Prefect server: the replay
    # test below runs that flow; here the rule, the rules' imports and the registry entry)
    test = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not prefect_server",
                           "tests/test_strategy_demo.py"], cwd=project, env=env, text=True, capture_output=True,
                          timeout=600)
    assert test.returncode == 0 and "3 passed" in test.stdout, test.stdout + test.stderr


@pytest.mark.prefect_server
def test_the_skeleton_deploys_and_replays(project_copy, exchange, prefect_api, monkeypatch):
    """`tradeflow deploy` registers it (with the six), a replay of a session runs its events as subflows."""
    require_bars("5m/SMH.csv")
    project, env = project_copy
    env = {**env, "PREFECT_API_URL": prefect_api, "TRADEFLOW_STRATEGIES": "ema,mtf,demo",
           "IBKR_HOST": "127.0.0.1", "IBKR_PORT": str(exchange.port),
           "TRADEFLOW_PAPER_ADMIN_PORT": str(exchange.admin_port), "TRADEFLOW_PAPER_ADMIN_TOKEN": exchange.admin_token}
    assert _tradeflow(project, "new-strategy", "demo", env=env).returncode == 0
    deployed = _tradeflow(project, "deploy", "--schedules", "off", env=env)
    assert deployed.returncode in (0, 1), deployed.stderr  # 1: a flow file missing would say so
    assert "demo/demo" in deployed.stdout and "ema-entry/ema-entry" in deployed.stdout, deployed.stdout
    assert "MISSING" not in deployed.stdout, deployed.stdout

    from prefect.client.orchestration import get_client

    from deployments.deploy import run

    async def read():
        async with get_client() as client:
            return await client.read_deployment_by_name("demo/demo")

    deployment = run(read())
    assert deployment.entrypoint == "strategies/demo/flow.py:demo" and sorted(deployment.tags) == [
        "demo", "tradeflow"]
    assert deployment.schedules and not any(s.active for s in deployment.schedules)

    replay = _tradeflow(project, "replay", "--from", "2026-03-03", "--to", "2026-03-03", "--deployments", "demo",
                        "--no-train", env=env)
    assert replay.returncode == 0, replay.stdout + replay.stderr
    from core.journal import Journal

    journal = Journal(get_settings().journal_path)
    done = journal.query("SELECT as_of FROM flow_events WHERE deployment = 'demo' AND event = 'completed' "
                         "ORDER BY as_of")
    assert [t.astimezone(NY) for t in done["as_of"]] == [  # every 30 minutes, 10:00 .. 16:00
        dt.datetime(2026, 3, 3, 10, 0, tzinfo=NY) + dt.timedelta(minutes=30 * i) for i in range(13)]
    decisions = journal.query("SELECT decision FROM signals WHERE strategy = 'demo'")
    assert len(decisions) == 13 and set(decisions["decision"]) <= {"BUY", "SELL", "HOLD"}
