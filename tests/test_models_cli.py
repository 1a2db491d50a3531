"""`tradeflow models list | promote SYMBOL VERSION | rollback SYMBOL` on a real registry, recorded in the journal."""

from __future__ import annotations

from core.journal import Journal
from core.settings import get_settings
from deployments.cli import main
from tests.mtf_support import model_templates, models  # noqa: F401


def test_list_promote_rollback(models, capsys):  # noqa: F811
    v_high, v_low = models.versions[("AAPL", 0.9)], models.versions[("AAPL", 0.1)]
    assert main(["models", "promote", "aapl", v_high]) == 0
    assert main(["models", "promote", "AAPL", v_low]) == 0
    out = capsys.readouterr().out
    assert f"AAPL: champion {v_low} (was {v_high})" in out
    assert main(["models", "list", "--symbols", "AAPL"]) == 0
    listing = capsys.readouterr().out
    assert f"AAPL: champion {v_low}; rollback to {v_high}" in listing and f"* {v_low}" in listing
    assert main(["models", "list"]) == 0 and "TSLA: champion none" in capsys.readouterr().out

    journal = Journal(get_settings().journal_path)
    status = dict(journal.query("SELECT version, status FROM models").values.tolist())
    assert status == {f"AAPL/{v_high}": "retired", f"AAPL/{v_low}": "champion"}

    assert main(["models", "rollback", "AAPL"]) == 0
    assert models.registry.champion("AAPL").version == v_high
    status = dict(journal.query("SELECT version, status FROM models").values.tolist())
    assert status == {f"AAPL/{v_high}": "champion", f"AAPL/{v_low}": "retired"}

    assert main(["models", "rollback", "AAPL"]) == 1
    assert "no previous champion" in capsys.readouterr().err
    assert main(["models", "promote", "AAPL", "v9999"]) == 1
    assert "no version 'v9999'" in capsys.readouterr().err
    assert models.registry.champion("AAPL").version == v_high  # failures changed nothing
