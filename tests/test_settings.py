"""Settings: defaults, `.env`, the environment, and errors that name the setting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import PROJECT_ROOT, SettingsError, load_settings
from deployments.cli import main


def test_defaults_are_paper_on_the_tws_paper_port(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no .env here
    for name in ["IBKR_HOST", "IBKR_PORT", "TRADING_MODE", "TRADEFLOW_STATE_DIR"]:
        monkeypatch.delenv(name, raising=False)
    s = load_settings()
    assert (s.ibkr_host, s.ibkr_port, s.trading_mode) == ("127.0.0.1", 7497, "paper")
    assert s.state_dir == PROJECT_ROOT / "state"
    assert s.journal_path == PROJECT_ROOT / "state" / "journal.duckdb"
    assert (s.ema_fast, s.ema_slow, s.daily_stop_fraction, s.mtf_entry_threshold) == (25, 125, 0.02, 0.52)


def test_environment_and_dotenv(monkeypatch, tmp_path):
    env_file = tmp_path / "tradeflow.env"
    env_file.write_text("IBKR_PORT=4002\nTRADEFLOW_MTF_SYMBOLS=[\"AAPL\"]\nTRADEFLOW_STATE_DIR=rel/state\n")
    monkeypatch.setenv("TRADEFLOW_ENV_FILE", str(env_file))
    monkeypatch.setenv("IBKR_PORT", "4001")  # the environment wins over .env
    s = load_settings()
    assert s.ibkr_port == 4001 and s.mtf_symbols == ["AAPL"]
    assert s.state_dir == PROJECT_ROOT / "rel" / "state"  # relative to the project, not the working folder


def test_a_dotenv_in_the_current_folder_is_not_read(monkeypatch, tmp_path):
    """`tradeflow halt` run from another folder acts on the flows' state dir, not on one a stray .env names."""
    from core.settings import env_file

    monkeypatch.delenv("TRADEFLOW_ENV_FILE", raising=False)
    monkeypatch.delenv("TRADEFLOW_STATE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("TRADEFLOW_STATE_DIR=/somewhere/else\nIBKR_CLIENT_ID=99\n")
    assert env_file() == PROJECT_ROOT / ".env"
    s = load_settings()
    assert s.state_dir != Path("/somewhere/else") and s.ibkr_client_id != 99


def test_config_prints_the_settings_in_force_with_secrets_masked(monkeypatch, tmp_path, capsys):
    env_file = tmp_path / "tradeflow.env"
    env_file.write_text("IBKR_CLIENT_ID=7\n")
    monkeypatch.setenv("TRADEFLOW_ENV_FILE", str(env_file))
    monkeypatch.setenv("TRADEFLOW_ALERT_URL", "json://127.0.0.1:9/very-secret")
    monkeypatch.setenv("IBKR_PORT", "4002")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert f".env file: {env_file} (read)" in out and "very-secret" not in out
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert lines["TRADEFLOW_ALERT_URL"].split()[1:] == ["***", "[environment]"]
    assert lines["IBKR_CLIENT_ID"].split()[1:] == ["7", "[.env]"]
    assert lines["IBKR_PORT"].split()[1:] == ["4002", "[environment]"]
    assert lines["TRADEFLOW_EMA_FAST"].split()[1:] == ["25", "[default]"]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("IBKR_PORT", "seven", "IBKR_PORT: Input should be a valid integer"),
        ("IBKR_PORT", "70000", "IBKR_PORT: Input should be less than or equal to 65535"),
        ("TRADING_MODE", "real", "TRADING_MODE: Input should be 'paper' or 'live'"),
        ("TRADEFLOW_DAILY_STOP_FRACTION", "2",
         "TRADEFLOW_DAILY_STOP_FRACTION: Input should be less than or equal to 0.5"),
        ("TRADEFLOW_EMA_FAST", "200", "TRADEFLOW_EMA_FAST must be smaller than TRADEFLOW_EMA_SLOW"),
        # typos or disasters (issue 19): bounds, finite numbers only
        ("TRADEFLOW_MTF_POSITION_USD", "1e9", "TRADEFLOW_MTF_POSITION_USD: Input should be less than or equal to"),
        ("TRADEFLOW_MTF_POSITION_USD", "inf", "TRADEFLOW_MTF_POSITION_USD: Input should be a finite number"),
        ("TRADEFLOW_DAILY_STOP_FRACTION", "nan", "TRADEFLOW_DAILY_STOP_FRACTION: Input should be a finite number"),
        ("TRADEFLOW_DAILY_STOP_FRACTION", "0.9", "TRADEFLOW_DAILY_STOP_FRACTION: Input should be less than or equal"),
        ("TRADEFLOW_DEFAULT_LEVERAGE", "50", "TRADEFLOW_DEFAULT_LEVERAGE: Input should be less than or equal to 5"),
        ("TRADEFLOW_VIX_LEVERAGE", "[[12, 37.5]]", "TRADEFLOW_VIX_LEVERAGE: leverage 37.5 is not in (0, 5]"),
        ("TRADEFLOW_MTF_DAILY_LOSS_LIMIT_USD", "1e12", "TRADEFLOW_MTF_DAILY_LOSS_LIMIT_USD: Input should be less"),
        ("TRADEFLOW_MTF_DAILY_LOSS_LIMIT_USD", "30000", "TRADEFLOW_MTF_DAILY_LOSS_LIMIT_USD 30,000.00 USD exceeds "
                                                        "everything the MTF positions hold"),
        ("TRADEFLOW_PAPER_RESTART_SECONDS", "-inf", "TRADEFLOW_PAPER_RESTART_SECONDS: Input should be a finite number"),
    ],
)
def test_a_wrong_value_names_the_setting(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert message in str(err.value)


def test_secrets_are_never_shown(monkeypatch):
    monkeypatch.setenv("TRADEFLOW_ALERT_URL", "https://hooks.example/very-secret-token")
    s = load_settings()
    assert "very-secret-token" not in repr(s) and "very-secret-token" not in str(s.alert_url)
    assert s.alert_url.get_secret_value().endswith("very-secret-token")


def test_every_command_fails_at_start_on_a_wrong_setting(monkeypatch, capsys):
    monkeypatch.setenv("IBKR_PORT", "not-a-port")
    assert main(["schedule", "--from", "2026-11-23", "--to", "2026-11-23"]) == 2
    err = capsys.readouterr().err
    assert "IBKR_PORT" in err and "not-a-port" in err and "Traceback" not in err


def test_the_installed_command_runs():
    exe = Path(sys.executable).with_name("tradeflow")
    out = subprocess.run([str(exe), "schedule", "--from", "2026-11-27", "--to", "2026-11-27",
                          "--deployment", "ema-entry"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "ema-entry 2026-11-27T12:55:00-05:00\n"


def test_env_example_documents_every_setting():
    from core.settings import Settings, _env_name

    text = (PROJECT_ROOT / ".env.example").read_text()
    missing = [_env_name(name) for name in Settings.model_fields if _env_name(name) not in text]
    assert not missing, f".env.example lacks {missing}"


def test_the_project_packages_import_from_any_folder(tmp_path):
    # Prefect runs an entrypoint such as flows/ema_entry.py:ema_entry in a process of its own, from wherever
    # it was started: the packages must come from the environment, not from the working folder.
    code = "import core.calendar, core.journal, core.settings, models, flows, tasks, deployments.cli; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize(("name", "meant"), [("TRADEFLOW_EMA_SPAN_FAST", "TRADEFLOW_EMA_FAST"),
                                             ("TRADEFLOW_MTF_ENTRY_TRESHOLD", "TRADEFLOW_MTF_ENTRY_THRESHOLD")])
def test_a_misspelled_setting_is_refused_with_the_name_meant(monkeypatch, tmp_path, name, meant):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(name, "10")
    with pytest.raises(SettingsError, match=f"{name} \\(in the environment\\) is not a setting: did you mean {meant}"):
        load_settings()
    monkeypatch.delenv(name)
    (tmp_path / ".env").write_text(f"{name}=10\n")  # the same in .env
    with pytest.raises(SettingsError, match=f"{name} \\(in .*\\.env\\) is not a setting: did you mean {meant}"):
        load_settings()


def test_names_read_outside_the_settings_are_not_refused(monkeypatch):
    monkeypatch.setenv("TRADEFLOW_SKIP_IB_ASYNC", "1")
    monkeypatch.setenv("TRADEFLOW_LIVE_ACCOUNT", "U1")
    assert load_settings().live_account == "U1"


def test_a_list_setting_that_is_not_json_is_named_in_one_line(monkeypatch, capsys):
    monkeypatch.setenv("TRADEFLOW_MTF_SYMBOLS", "AAPL")
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert str(err.value) == ("invalid settings:\n  TRADEFLOW_MTF_SYMBOLS: not valid JSON (got 'AAPL'): write it as "
                              "JSON, e.g. TRADEFLOW_MTF_SYMBOLS='[\"AAPL\", \"TSLA\"]'")
    assert main(["schedule", "--from", "2026-11-23", "--to", "2026-11-23"]) == 2
    err_out = capsys.readouterr().err
    assert "TRADEFLOW_MTF_SYMBOLS: not valid JSON" in err_out and "Traceback" not in err_out
