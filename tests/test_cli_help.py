"""The command line for people: every command's --help explains it with an example, --version, a bash
completion script that completes, `halt` / `resume` say which state directory they acted on and show the kill
switch in the Prefect UI (a Variable), `flatten` asks before it sends anything."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from typing import Optional, Union

import pytest

from core.settings import PROJECT_ROOT
from deployments.cli import EXAMPLES, _build_parser, main


def _subcommands() -> dict:
    import argparse

    parser = _build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_command_has_help_with_an_example():
    commands = _subcommands()
    assert set(commands) <= set(EXAMPLES), f"commands without an example: {set(commands) - set(EXAMPLES)}"
    for name, parser in commands.items():
        text = parser.format_help()
        assert f"example:\n  tradeflow {name}" in text or f"example:\n  {EXAMPLES[name]}" in text, name
        assert parser.description or parser.format_usage(), name


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("tradeflow 0.")


def test_bash_completion_completes_commands_and_options(tmp_path, capsys):
    assert main(["completion"]) == 0
    script = tmp_path / "tradeflow.bash"
    script.write_text(capsys.readouterr().out)

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        out = subprocess.run(["bash", "-c", f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
                                            "_tradeflow; echo \"${COMPREPLY[@]}\""],
                             capture_output=True, text=True, check=True, timeout=30).stdout
        return out.split()

    assert complete("tradeflow", "sta") == ["status"]
    assert complete("tradeflow", "flatten", "--y") == ["--yes"]
    assert set(complete("tradeflow", "replay", "--")) >= {"--from", "--to", "--sessions", "--mtf-every"}


def tradeflow(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deployments.cli", *args], env=dict(os.environ), cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120, input=stdin)


def test_flatten_without_yes_sends_nothing_when_it_cannot_ask(state_dir, monkeypatch):
    monkeypatch.setenv("IBKR_PORT", "9")  # nothing listens there: were it to connect, it would fail differently
    done = tradeflow("flatten", "--reason", "test")
    assert done.returncode == 2 and "give --yes to confirm" in done.stderr


@pytest.mark.prefect_server
def test_halt_and_resume_name_the_state_dir_and_show_in_the_ui(state_dir, prefect_api):
    from prefect.variables import Variable

    from tasks.ui import KILL_SWITCH_VARIABLE

    done = tradeflow("halt", "--reason", "checking the broker", "--who", "tester")
    assert done.returncode == 0, done.stderr
    assert f"state dir {state_dir}" in done.stdout and "Variables: tradeflow_kill_switch" in done.stdout
    shown = Variable.get(KILL_SWITCH_VARIABLE)
    assert shown.startswith("HALTED: trading halted by tester") and "checking the broker" in shown
    assert str(state_dir) in shown
    done = tradeflow("resume", "--reason", "checked", "--who", "tester")
    assert done.returncode == 0 and f"state dir {state_dir}" in done.stdout
    assert Variable.get(KILL_SWITCH_VARIABLE) == f"trading allowed (state dir {state_dir})"


@pytest.mark.prefect_server
def test_run_names_come_from_as_of_in_new_york_time_or_the_scheduled_start(prefect_api):
    from prefect.client.orchestration import get_client

    from core.calendar import NY
    from deployments.deploy import run

    async def name(run_id: str) -> str:
        async with get_client() as client:
            return (await client.read_flow_run(run_id)).name

    probe = _name_probe()
    assert run(name(probe(dt.datetime(2026, 3, 6, 20, 55, tzinfo=dt.timezone.utc)))) == "name-probe 2026-03-06 15:55"
    assert run(name(probe("2026-11-27T12:55:00-05:00"))) == "name-probe 2026-11-27 12:55"
    before = dt.datetime.now(NY)
    got = run(name(probe()))  # no as_of: the run's scheduled start (now, for a direct call), New York time
    assert got in {f"name-probe {t:%Y-%m-%d %H:%M}" for t in (before, before + dt.timedelta(minutes=1))}, got


def _name_probe():
    from prefect import flow

    from tasks.ui import run_name

    @flow(name="name-probe", flow_run_name=run_name("name-probe"))
    def probe(as_of: Optional[Union[dt.datetime, str]] = None) -> str:  # noqa: UP007 - resolved at run time
        from prefect.runtime import flow_run as current

        return str(current.id)

    return probe
