"""The operator's commands when the machine is not well (issue 19, finding 6): `tradeflow halt` on a state
directory that cannot be written, or with the journal held by another process (the HALT file is the truth:
never a halt without its file, never a journaled halt without the file); `tradeflow train` with a symbol that
has no bars skips it and trains the others."""

from __future__ import annotations

import os

from core.controls import KillSwitch
from core.journal import Journal
from core.settings import get_settings
from deployments.cli import main
from tests.test_order_protection import JournalHolder


def test_halt_on_a_full_disk_says_not_halted_and_journals_nothing(state_dir, capsys):
    Journal(get_settings().journal_path).ensure()
    tmp = state_dir / f"HALT.{os.getpid()}.tmp"
    tmp.symlink_to("/dev/full")  # every write to the halt file's temporary copy: ENOSPC, as on a full disk
    assert main(["halt", "--reason", "test: disk full", "--who", "tester"]) == 1
    err = capsys.readouterr().err
    assert "trading is NOT halted: the halt file" in err and "No space left on device" in err
    assert "Traceback" not in err
    assert KillSwitch(state_dir).current() is None and not (state_dir / "HALT").exists()
    assert not tmp.exists() and not tmp.is_symlink()  # nothing left behind
    assert Journal(get_settings().journal_path).query("SELECT count(*) AS n FROM controls")["n"][0] == 0


def test_halt_with_the_journal_held_halts_and_says_the_journal_lacks_it(state_dir, monkeypatch, capsys):
    monkeypatch.setenv("TRADEFLOW_JOURNAL_LOCK_TIMEOUT_SECONDS", "1")
    get_settings.cache_clear()
    journal = Journal(get_settings().journal_path)
    journal.ensure()
    holder = JournalHolder(journal.path)
    holder.hold()  # the writer stopped, another process holds the live file
    try:
        assert main(["halt", "--reason", "test: journal held", "--who", "tester"]) == 1
        err = capsys.readouterr().err
        assert "trading IS halted (the HALT file" in err and "the journal could not record it" in err
        assert KillSwitch(state_dir).current().who == "tester"  # the halt stands
        assert main(["resume", "--reason", "test", "--who", "tester"]) == 1  # nor lifted without its journal row
        err = capsys.readouterr().err
        assert "tradeflow resume: FAILED" in err and "trading is still halted" in err
        assert KillSwitch(state_dir).current() is not None
    finally:
        holder.release()
    assert main(["resume", "--reason", "test over", "--who", "tester"]) == 0
    assert KillSwitch(state_dir).current() is None


def test_train_skips_a_symbol_without_bars_and_trains_the_others(state_dir, tmp_path, capfd):
    from tests.data import require_bars

    require_bars("1h/AAPL.csv")
    models = tmp_path / "models"
    code = main(["train", "--symbols", "NOSUCH", "AAPL", "--epochs", "1", "--models-dir", str(models),
                 "--as-of", "2026-03-02T18:00:00-05:00"])
    out, err = capfd.readouterr()
    assert code == 1  # one symbol was skipped
    assert "NOSUCH: skipped: no usable hourly bars (bars file not found:" in err and "Traceback" not in err
    assert "AAPL: " in out and "registered AAPL" in out
    assert (models / "AAPL").is_dir() and not (models / "NOSUCH").exists()


def test_a_local_server_password_others_can_read_is_refused(state_dir, capsys):
    from deployments.prefect_auth import auth_path, ensure_auth

    home = get_settings().prefect_home
    secret = ensure_auth(home)
    assert secret.startswith("tradeflow:") and ensure_auth(home) == secret  # made once, then read
    assert oct(auth_path(home).stat().st_mode & 0o777) == "0o600"
    auth_path(home).chmod(0o644)
    assert main(["schedule", "--from", "2026-11-23", "--to", "2026-11-23"]) == 2
    err = capsys.readouterr().err
    assert f"can be read by others (mode 644): `chmod 600 {auth_path(home)}`" in err and secret not in err
