"""The monthly `retrain` flow against the paper exchange: the bar store fed incrementally from the Broker, a
challenger trained on the months before the evaluation month, champion and challenger compared on that month,
promotion only by the rule, both evaluations in the journal.

The champions are of known quality (tests/mtf_support.fitted_model): AAPL's was fitted on the evaluation month
itself (far better there than any honest challenger: it must stay), TSLA's is that model inverted (far worse
than chance: the challenger must replace it). One run shows both outcomes.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from core.calendar import NY
from core.journal import Journal
from core.settings import get_settings
from models.registry import ModelRegistry
from models.retrain import evaluation_month
from tests.broker_support import START
from tests.mtf_support import (FEB, HISTORY_FROM, MAR, event_loop_for_ib,  # noqa: F401
                               register_known_champions, retrain_store)


def test_evaluation_month_is_the_last_month_whose_last_session_closed():
    assert evaluation_month(datetime(2026, 2, 27, 18, 0, tzinfo=NY)).label == "oos:2026-02"  # its last session
    assert evaluation_month(datetime(2026, 2, 27, 15, 0, tzinfo=NY)).label == "oos:2026-01"  # still open
    assert evaluation_month(datetime(2026, 2, 26, 18, 0, tzinfo=NY)).label == "oos:2026-01"
    w = evaluation_month(START)
    assert (w.start, w.end, w.label) == (FEB, MAR, "oos:2026-02")
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluation_month(datetime(2026, 3, 2))


def test_promotion_needs_the_edge_gate_as_well_as_beating_the_champion():
    from models.gate import GateVerdict
    from models.retrain import promotion_with_gate

    shut, open_ = GateVerdict(False, "walk-forward evidence below the bar: x"), GateVerdict(True, "clears the bar")
    assert promotion_with_gate(True, "challenger better: ...", open_, True) == (True, "challenger better: ...; "
                                                                                      "edge gate: clears the bar")
    promote, reason = promotion_with_gate(True, "challenger better: ...", shut, True)
    assert not promote and reason.startswith("champion stays: the challenger beat it on the month but")
    assert promotion_with_gate(False, "champion stays: ...", open_, True) == (False, "champion stays: ...")
    # no champion to replace: promoted, and its gate keeps it from sending entries
    promote, reason = promotion_with_gate(True, "no champion", shut, False)
    assert promote and "sends no entry until the gate opens" in reason


def test_retrain_keeps_a_better_champion_and_replaces_a_worse_one(exchange, prefect_harness, retrain_store,
                                                                  monkeypatch):  # noqa: F811
    from flows.retrain import retrain

    # this test is about the champion comparison: a bar every challenger clears (the gate has its own tests)
    for name, value in (("MIN_AUC_LOW", "0"), ("MIN_RETURN", "-1"), ("BASELINES", "[]"), ("MIN_TRADES", "0")):
        monkeypatch.setenv(f"TRADEFLOW_MTF_GATE_{name}", value)
    get_settings.cache_clear()

    registry = ModelRegistry(get_settings().models_dir, Journal(get_settings().journal_path))
    register_known_champions(registry, retrain_store)

    out = retrain(as_of=START, history_months=13, epochs=2, lstm_units=[8], wf_folds=2, wf_epochs=2)
    by = {r["symbol"]: r for r in out["results"]}
    assert out["window"] == "oos:2026-02"
    aapl, tsla = by["AAPL"], by["TSLA"]
    assert aapl["champion_oos"]["roc_auc"] > 0.75 and tsla["champion_oos"]["roc_auc"] < 0.25  # as constructed
    assert (aapl["challenger"], aapl["promoted"]) == ("v0002", False) and aapl["reason"].startswith("champion stays")
    assert (tsla["challenger"], tsla["promoted"]) == ("v0002", True) and tsla["reason"].startswith("challenger better")
    assert "edge gate" in tsla["reason"] and tsla["edge_gate"]["passed"]
    assert len(tsla["walk_forward"]["folds"]) == 2
    assert datetime.fromisoformat(tsla["walk_forward"]["window"]["bars_last"]) < FEB  # before the evaluation month
    assert registry.champion("AAPL").version == "v0001" and registry.champion("TSLA").version == "v0002"
    assert registry.champion_history("TSLA") == ["v0001"]

    challenger = registry.get("AAPL", "v0002").metadata
    assert challenger["retrain"]["window"] == "oos:2026-02"
    assert datetime.fromisoformat(challenger["splits"]["test"]["last"]) < FEB  # trained before the window only
    assert datetime.fromisoformat(challenger["data"]["bars_first"]) <= HISTORY_FROM.replace(day=5)

    journal = Journal(get_settings().journal_path)
    models = journal.query("SELECT version, status FROM models ORDER BY version")
    assert models.values.tolist() == [["AAPL/v0001", "champion"], ["AAPL/v0002", "challenger"],
                                      ["TSLA/v0001", "retired"], ["TSLA/v0002", "champion"]]
    oos = journal.query("SELECT version, metric, value, baseline FROM model_metrics WHERE eval_window = 'oos:2026-02'"
                        " AND metric IN ('roc_auc', 'log_loss') ORDER BY version, metric")
    assert len(oos) == 8 and oos["baseline"].notna().all()
    auc = {r.version: r.value for r in oos.itertuples() if r.metric == "roc_auc"}
    assert auc["AAPL/v0001"] == pytest.approx(aapl["champion_oos"]["roc_auc"])
    assert auc["TSLA/v0002"] == pytest.approx(tsla["challenger_oos"]["roc_auc"])
    own = journal.query("SELECT DISTINCT eval_window FROM model_metrics WHERE version = 'TSLA/v0002' ORDER BY 1")
    assert own["eval_window"].tolist() == ["oos:2026-02", "test", "val", "walkforward", "walkforward:fold1",
                                           "walkforward:fold2"]

    again = retrain(as_of=START, history_months=13, epochs=2, lstm_units=[8], wf_folds=2,
                    wf_epochs=2)  # a rerun trains nothing new (and reads the walk-forward evidence it stored)
    assert [(r["symbol"], r["challenger"], r["promoted"], r["trained"]) for r in again["results"]] == [
        ("AAPL", "v0002", False, False), ("TSLA", "v0002", True, False)]
    assert [v.version for v in registry.list_versions("TSLA")] == ["v0001", "v0002"]
    assert registry.champion("TSLA").version == "v0002" and registry.champion("AAPL").version == "v0001"
